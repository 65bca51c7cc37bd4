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

    def validate(self) -> "ServeSettings":
        _pos("weights_poll_s", self.weights_poll_s)
        _pos("max_batch_size", self.max_batch_size)
        if self.batch_wait_timeout_s < 0:
            raise SettingsError(f"batch_wait_timeout_s: must be >= 0, got {self.batch_wait_timeout_s}")
        for name, url in self.upstreams.items():
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise SettingsError(f"upstreams.{name}: must be an http(s) base URL, got {url!r}")
        self.trainer.validate()
        return self

    def absolute(self) -> "ServeSettings":
        """Replicas may run with another working directory: pin every path now."""
        self.checkpoint = str(Path(self.checkpoint).expanduser().resolve())
        self.log_dir = str(Path(self.log_dir).expanduser().resolve())
        self.trainer.state_dir = str(Path(self.trainer.state_dir).expanduser().resolve())
        return self


def settings_from_args(args: dict[str, Any] | None) -> ServeSettings:
    args = dict(args or {})
    known = {f.name for f in dataclasses.fields(ServeSettings)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise SettingsError(f"args: unknown field(s) {unknown}; known: {sorted(known)}")
    trainer_raw = args.pop("trainer", None) or {}
    if not isinstance(trainer_raw, dict):
        raise SettingsError("trainer: must be a mapping")
    tknown = {f.name for f in dataclasses.fields(TrainerSettings)}
    tunknown = sorted(set(trainer_raw) - tknown)
    if tunknown:
        raise SettingsError(f"trainer: unknown field(s) {tunknown}; known: {sorted(tknown)}")
    try:
        s = ServeSettings(**args, trainer=TrainerSettings(**trainer_raw))
    except TypeError as e:
        raise SettingsError(str(e)) from None
    return s.validate()


def _pos(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise SettingsError(f"{name}: must be a number > 0, got {v!r}")
