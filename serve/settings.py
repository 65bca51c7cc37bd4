"""Arguments of the Serve application (`args:` in configs/serve.yaml), typed and validated.

Errors are one line naming the field, like the training config, so `serve run` fails readably.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    pass


@dataclass
class TrainerSettings:
    enabled: bool = True
    batch_size: int = 256  # joined feedback records per update
    lr: float = 3e-4
    entropy_coeff: float = 0.01
    importance_weight_clip: float = 2.0  # served data came from an older policy: clip pi/mu
    poll_s: float = 1.0
    state_dir: str = "runs/serve/trainer"

    def validate(self) -> None:
        _pos("trainer.batch_size", self.batch_size)
        _pos("trainer.lr", self.lr)
        if self.entropy_coeff < 0:
            raise SettingsError(f"trainer.entropy_coeff: must be >= 0, got {self.entropy_coeff}")
        _pos("trainer.importance_weight_clip", self.importance_weight_clip)
        _pos("trainer.poll_s", self.poll_s)


@dataclass
class AuthSettings:
    """Where the bearer token comes from. There is no default token: one source must be named,
    or auth explicitly disabled (local experiments only)."""

    token_env: str | None = "BARP_API_TOKEN"  # environment variable holding the token
    token_file: str | None = None  # or a secrets file (first line); wins over token_env
    require_for_route: bool = False  # /v1/route and /v1/chat/completions too
    disabled: bool = False

    def validate(self) -> None:
        if not self.disabled and not (self.token_env or self.token_file):
            raise SettingsError("auth: name token_env or token_file (or set disabled: true for local use)")


@dataclass
class LimitSettings:
    max_body_bytes: int = 64 * 1024
    max_prompt_bytes: int = 32 * 1024
    max_prompt_tokens: int = 512  # MiniLM reads 256; longer prompts are cut or refused
    long_prompt: str = "truncate"  # truncate | reject

    def validate(self) -> None:
        _pos("limits.max_body_bytes", self.max_body_bytes)
        _pos("limits.max_prompt_bytes", self.max_prompt_bytes)
        _pos("limits.max_prompt_tokens", self.max_prompt_tokens)
        if self.long_prompt not in ("truncate", "reject"):
            raise SettingsError(f"limits.long_prompt: must be 'truncate' or 'reject', got {self.long_prompt!r}")


@dataclass
class ServeSettings:
    checkpoint: str = "checkpoints/barp-default"
    log_dir: str = "runs/serve/log"
    weights_poll_s: float = 1.0  # how often replicas look for newer published weights
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    upstreams: dict = field(default_factory=dict)  # model name -> OpenAI-compatible base URL
    upstream_timeout_s: float = 60.0
    # RouterModel autoscaling for Python deployments; in YAML, `deployments:` overrides it.
    router_autoscaling: dict = field(
        default_factory=lambda: {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    )
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)

    def validate(self) -> "ServeSettings":
        _pos("weights_poll_s", self.weights_poll_s)
        _pos("max_batch_size", self.max_batch_size)
        if self.batch_wait_timeout_s < 0:
            raise SettingsError(f"batch_wait_timeout_s: must be >= 0, got {self.batch_wait_timeout_s}")
        for name, url in self.upstreams.items():
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise SettingsError(f"upstreams.{name}: must be an http(s) base URL, got {url!r}")
        self.trainer.validate()
        self.auth.validate()
        self.limits.validate()
        return self

    def absolute(self) -> "ServeSettings":
        """Replicas may run with another working directory: pin every path now."""
        self.checkpoint = str(Path(self.checkpoint).expanduser().resolve())
        self.log_dir = str(Path(self.log_dir).expanduser().resolve())
        self.trainer.state_dir = str(Path(self.trainer.state_dir).expanduser().resolve())
        if self.auth.token_file:
            self.auth.token_file = str(Path(self.auth.token_file).expanduser().resolve())
        return self


def settings_from_args(args: dict[str, Any] | None) -> ServeSettings:
    args = dict(args or {})
    _check_keys("args", args, ServeSettings)
    nested = {}
    for name, cls in (("trainer", TrainerSettings), ("auth", AuthSettings), ("limits", LimitSettings)):
        raw = args.pop(name, None) or {}
        if not isinstance(raw, dict):
            raise SettingsError(f"{name}: must be a mapping")
        _check_keys(name, raw, cls)
        nested[name] = cls(**raw)
    try:
        s = ServeSettings(**args, **nested)
    except TypeError as e:
        raise SettingsError(str(e)) from None
    return s.validate()


def _check_keys(where: str, raw: dict, cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")


def _pos(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise SettingsError(f"{name}: must be a number > 0, got {v!r}")
