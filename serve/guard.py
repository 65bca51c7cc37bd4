"""Request guards for the HTTP ingress: bearer-token auth and size limits.

The token is read by each ingress replica from its own environment or secrets file, so it
never travels in deployment arguments, Serve's config or logs; comparisons are constant-time.
"""
from __future__ import annotations

import hmac
import os
from pathlib import Path

from serve.settings import AuthSettings, LimitSettings


# Per-process guard settings, filled by the ingress replica at start (token, limits).
STATE: dict = {}


class GuardError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def load_token(auth: AuthSettings) -> str | None:
    """None only when auth is explicitly disabled; a configured-but-empty source is an error."""
    if auth.disabled:
        return None
    if auth.token_file:
        path = Path(auth.token_file)
        if not path.is_file():
            raise GuardError(500, f"auth.token_file: {path} not found")
        token = path.read_text().splitlines()[0].strip() if path.read_text().strip() else ""
        source = f"auth.token_file ({path})"
    else:
        token = os.environ.get(auth.token_env or "", "").strip()
        source = f"auth.token_env (${auth.token_env})"
    if len(token) < 16:
        raise GuardError(500, f"{source}: no token, or shorter than 16 characters")
    return token


def check_bearer(header: str | None, token: str | None) -> None:
    if token is None:
        return
    if not header:
        raise GuardError(401, "authorization: missing bearer token (send 'Authorization: Bearer <token>')")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise GuardError(401, "authorization: expected 'Bearer <token>'")
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise GuardError(401, "authorization: invalid bearer token")


class PromptLimiter:
    """Byte and token limits on prompts; tokens counted with the router's own tokenizer."""

    def __init__(self, limits: LimitSettings, encoder_name: str):
        from barp_ray.encoder import resolve_encoder_path

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from tokenizers import Tokenizer

        self.limits = limits
        self.tokenizer = Tokenizer.from_file(str(Path(resolve_encoder_path(encoder_name)) / "tokenizer.json"))
        self.tokenizer.no_truncation()

    def apply(self, prompt: str, field: str = "prompt") -> str:
        n_bytes = len(prompt.encode("utf-8", "surrogatepass"))
        if n_bytes > self.limits.max_prompt_bytes:
            raise GuardError(413, f"{field}: {n_bytes} bytes, more than the limit of {self.limits.max_prompt_bytes}")
        enc = self.tokenizer.encode(prompt, add_special_tokens=False)
        if len(enc.ids) <= self.limits.max_prompt_tokens:
            return prompt
        if self.limits.long_prompt == "reject":
            raise GuardError(
                413, f"{field}: {len(enc.ids)} tokens, more than the limit of {self.limits.max_prompt_tokens}"
            )
        return prompt[: enc.offsets[self.limits.max_prompt_tokens - 1][1]]
