"""Request guards for the HTTP ingress: bearer-token auth and size limits.

The token is read by each ingress replica from its own environment or secrets file, so it
never travels in deployment arguments, Serve's config or logs; comparisons are constant-time.
"""
from __future__ import annotations

import hmac
import os
import re
from contextvars import ContextVar
from dataclasses import dataclass
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
    return _read_token(auth.token_file, auth.token_env, "auth.token")


def load_admin_token(auth: AuthSettings) -> str | None:
    """The token /v1/admin/* needs when one is configured (None: the API token opens them too)."""
    if auth.disabled or not (auth.admin_token_file or auth.admin_token_env):
        return None
    token = _read_token(auth.admin_token_file, auth.admin_token_env, "auth.admin_token")
    if token == load_token(auth):
        raise GuardError(500, "auth.admin_token: must differ from the API token, or it guards nothing")
    return token


@dataclass(frozen=True)
class ClientSpec:
    """A named client (`auth.clients_file`): what its routes are logged under, the preference they
    get when they send none, and the models they may be routed to (None: all)."""

    name: str
    preference: tuple[float, float] | None = None
    candidates: tuple[str, ...] | None = None

    def public(self) -> dict:
        return {"preference": list(self.preference) if self.preference else None,
                "candidates": list(self.candidates) if self.candidates else None}

    def refusal(self, field: str, wanted) -> str | None:
        """The 403's message when `wanted` names a model outside this client's, else None."""
        barred = sorted(set(wanted) - set(self.candidates)) if self.candidates is not None else []
        return f"{field}: client {self.name!r} may not use {barred}; its models: {list(self.candidates)}" if barred else None


# The named client the current request came from (None: the API or admin token, or no token), set by
# GuardMiddleware for the request's task: the handlers read it without a parameter in the schema.
CLIENT: ContextVar[ClientSpec | None] = ContextVar("barp_client", default=None)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def load_clients(auth: AuthSettings, models: list[str]) -> dict[str, ClientSpec]:
    """token -> client, from `auth.clients_file`; a one-line error naming the client and field."""
    import yaml

    from serve.schemas import RouteRequest

    if auth.disabled or not auth.clients_file:
        return {}
    path = Path(auth.clients_file)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise GuardError(500, f"auth.clients_file: cannot read {path} ({type(e).__name__})") from None
    if not isinstance(raw, dict) or not raw:
        raise GuardError(500, f"auth.clients_file: {path} must map client names to {{token, preference?, candidates?}}")
    reserved = {load_token(auth), load_admin_token(auth)}
    out: dict[str, ClientSpec] = {}
    for name, entry in raw.items():
        where = f"auth.clients_file: {name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise GuardError(500, f"{where}: a client name is letters, digits, '_', '.' or '-' (at most 64)")
        if not isinstance(entry, dict) or set(entry) - {"token", "preference", "candidates"}:
            raise GuardError(500, f"{where}: must be a mapping with token and optional preference, candidates")
        token = entry.get("token")
        if not isinstance(token, str) or len(token.strip()) < 16:
            raise GuardError(500, f"{where}.token: no token, or shorter than 16 characters")
        token = token.strip()
        if token in out or token in reserved:
            raise GuardError(500, f"{where}.token: used by another client or by the API or admin token")
        preference = None
        if entry.get("preference") is not None:
            try:
                preference = RouteRequest(prompt="x", preference=entry["preference"]).weights()
            except ValueError:
                raise GuardError(500, f"{where}.preference: a knob in [0, 1], a [w_q, w_c] pair or {{quality, cost}}") from None
        candidates = entry.get("candidates")
        if candidates is not None:
            if not isinstance(candidates, list) or not candidates or not all(isinstance(m, str) for m in candidates):
                raise GuardError(500, f"{where}.candidates: a non-empty list of model names")
            unknown = sorted(set(candidates) - set(models))
            if unknown:
                raise GuardError(500, f"{where}.candidates: unknown model(s) {unknown}; known: {models}")
            candidates = tuple(candidates)
        out[token] = ClientSpec(name, preference, candidates)
    return out


def _read_token(file: str | None, env: str | None, name: str) -> str:
    if file:
        path = Path(file)
        if not path.is_file():
            raise GuardError(500, f"{name}_file: {path} not found")
        token = path.read_text().splitlines()[0].strip() if path.read_text().strip() else ""
        source = f"{name}_file ({path})"
    else:
        token = os.environ.get(env or "", "").strip()
        source = f"{name}_env (${env})"
    if len(token) < 16:
        raise GuardError(500, f"{source}: no token, or shorter than 16 characters")
    return token


def check_bearer(header: str | None, token: str | None) -> None:
    if token is None:
        return
    if not header:
        raise GuardError(401, "authorization: missing bearer token (send 'Authorization: Bearer <token>')")
    value = _bearer(header)
    if value is None:
        raise GuardError(401, "authorization: expected 'Bearer <token>'")
    if not hmac.compare_digest(value.encode(), token.encode()):
        raise GuardError(401, "authorization: invalid bearer token")


COUNT_EXACT_CHARS = 64 * 1024  # characters counted exactly; a longer text is counted from samples
SAMPLES = 64


class PromptLimiter:
    """Byte and token limits on prompts; tokens counted with the router's own tokenizer."""

    def __init__(self, limits: LimitSettings, encoder_name: str):
        from barp_ray.encoder import load_tokenizer, resolve_encoder_path

        self.limits = limits
        self.tokenizer = load_tokenizer(resolve_encoder_path(encoder_name))  # unpadded, untruncated: true counts

    def count(self, text: str) -> int:
        """The text's tokens, whole (what a provider bills), by the router's tokenizer. Above
        COUNT_EXACT_CHARS the count is scaled up from SAMPLES evenly spread slices of the text: exact
        counting runs at ~0.5 M tokens/s here, so an 8 MiB chat body would hold the replica for 6 s,
        and the tokenizer is only a proxy for each provider's own anyway."""
        if len(text) <= COUNT_EXACT_CHARS:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        width, step = COUNT_EXACT_CHARS // SAMPLES, len(text) / SAMPLES
        starts = [int((i + 0.5) * step) - width // 2 for i in range(SAMPLES)]  # mid-stratum: no edge, no alignment with a period
        slices = [text[a: a + width] for a in starts]
        sampled = sum(len(e.ids) for e in self.tokenizer.encode_batch(slices, add_special_tokens=False))
        return round(sampled * len(text) / (width * SAMPLES))

    def apply(self, prompt: str, field: str = "prompt") -> str:
        n_bytes = len(prompt.encode("utf-8", "surrogatepass"))
        if n_bytes > self.limits.max_prompt_bytes:
            raise GuardError(413, f"{field}: {n_bytes} bytes, more than the limit of {self.limits.max_prompt_bytes}")
        cut, n_tokens = self._token_cut(prompt, n_bytes)
        if n_tokens is not None and n_tokens > self.limits.max_prompt_tokens and self.limits.long_prompt == "reject":
            raise GuardError(413, f"{field}: {n_tokens} tokens, more than the limit of {self.limits.max_prompt_tokens}")
        return cut

    def routing_text(self, text: str) -> str:
        """The start of a text that travels whole elsewhere (a chat message goes to its provider), cut
        to what the route limits let the router read: a long message is routed on its start, never refused."""
        head = text.encode("utf-8", "surrogatepass")[: self.limits.max_prompt_bytes]
        return self._token_cut(head.decode("utf-8", "ignore"), len(head))[0]  # a character split by the byte cut is dropped

    def _token_cut(self, text: str, n_bytes: int) -> tuple[str, int | None]:
        """(the text cut to max_prompt_tokens; its whole token count, None when not counted). Every WordPiece token covers at least one byte of UTF-8, so a text of at most
        max_prompt_tokens bytes cannot be over the limit: it is not counted (the encoder tokenizes it anyway)."""
        if n_bytes <= self.limits.max_prompt_tokens:
            return text, None
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        if len(enc.ids) <= self.limits.max_prompt_tokens:
            return text, len(enc.ids)
        return text[: enc.offsets[self.limits.max_prompt_tokens - 1][1]], len(enc.ids)


ALWAYS_PROTECTED = ("/v1/feedback", "/v1/admin/", "/v1/stats")
ADMIN_PATH = "/v1/admin/"
OPERATOR_PATHS = (ADMIN_PATH, "/v1/stats")  # not for a named client's token
ROUTE_PATH, CHAT_PATH, RESPONSES_PATH, MESSAGES_PATH = "/v1/route", "/v1/chat/completions", "/v1/responses", "/v1/messages"
OPENAI_PATHS = (CHAT_PATH, RESPONSES_PATH)  # OpenAI's shape of error
PROVIDER_PATHS = (*OPENAI_PATHS, MESSAGES_PATH)  # answered by the providers: chat's size limit and token rule


def _bearer(header: str | None) -> str | None:
    scheme, _, value = (header or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _check(header: str | None, admin: bool, operator: bool) -> ClientSpec | None:
    """Who may pass, and as which named client. The API token opens every protected path unless an
    admin token is configured: then the admin paths need it (the API token gets a 403 there, not a
    401: it is valid, just not enough), and it opens the other paths too. A named client's token
    opens what is not `operator` only (stats and admin are the operator's): routing, chat, feedback."""
    value = _bearer(header)
    client = next((c for t, c in STATE.get("clients", {}).items() if value and hmac.compare_digest(value.encode(), t.encode())), None)
    if client is not None:
        if operator:
            raise GuardError(403, f"authorization: client {client.name!r} cannot use this path; the operator's "
                                  "API or admin token can")
        return client
    admin_token = STATE.get("admin_token")
    if admin_token is None:
        check_bearer(header, STATE["token"])
        return None
    try:
        check_bearer(header, admin_token)
    except GuardError:
        check_bearer(header, STATE["token"])  # raises 401 unless it is the API token
        if admin:
            raise GuardError(403, "authorization: the API token cannot use /v1/admin/; send the admin token "
                                  "(auth.admin_token_env or auth.admin_token_file)") from None
    return None


class GuardMiddleware:
    """Size limit (declared and actual body) and bearer token, before FastAPI parses anything.

    Settings come from STATE, filled by the ingress replica: Serve ships the deployment class by
    value, with its own copy of the app module's globals, but this module is imported normally."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not STATE:
            return await self.app(scope, receive, send)
        path = scope["path"]
        limit = STATE["max_chat_body_bytes"] if path.startswith(PROVIDER_PATHS) else STATE["max_body_bytes"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path.startswith(MESSAGES_PATH) and "authorization" not in headers and "x-api-key" in headers:
            headers["authorization"] = f"Bearer {headers['x-api-key']}"  # how Anthropic's clients send their key
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _refuse(scope, receive, send, 413, f"body: larger than the limit of {limit} bytes")
        protected = (path.startswith(ALWAYS_PROTECTED) or (STATE["require_for_route"] and path.startswith(ROUTE_PATH))
                     or (STATE["require_for_chat"] and path.startswith(PROVIDER_PATHS)))
        # An open path (a route without require_for_route) with a token still says who sent it; a
        # wrong token there is refused rather than ignored, so a misconfigured client finds out.
        CLIENT.set(None)
        if protected or (STATE.get("clients") and "authorization" in headers):
            try:
                CLIENT.set(_check(headers.get("authorization"), admin=path.startswith(ADMIN_PATH),
                                  operator=path.startswith(OPERATOR_PATHS)))
            except GuardError as e:
                return await _refuse(scope, receive, send, e.status, str(e), {"WWW-Authenticate": "Bearer"})
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:  # a chunked body has no content-length: count what actually arrives
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _refuse(scope, receive, send, 413, f"body: larger than the limit of {limit} bytes")
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later reads wait for a disconnect (a streaming response watches for it)

        return await self.app(scope, replay, send)


def error_response(status: int, message: str, path: str = "", code: str | None = None, headers: dict | None = None):
    """This API's error, `{"error": message}`; on the OpenAI endpoints in OpenAI's shape (`chat_error`), on
    the Messages endpoint in Anthropic's (`messages_error`).
    The guard's refusals and the handlers' errors both come from here, so a path answers in one shape."""
    from starlette.responses import JSONResponse

    from serve.schemas import chat_error, messages_error

    content = (chat_error(status, message, code) if path.startswith(OPENAI_PATHS) else
               messages_error(status, message) if path.startswith(MESSAGES_PATH) else {"error": message})
    return JSONResponse(status_code=status, content=content, headers=headers)


async def _refuse(scope, receive, send, status: int, message: str, headers: dict | None = None) -> None:
    await error_response(status, message, scope["path"], headers=headers)(scope, receive, send)
