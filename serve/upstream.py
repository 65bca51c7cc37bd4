"""The chosen model's provider: one pooled HTTP client per ingress replica, with credentials.

Why pooled: a new client session per chat request paid a TCP (and TLS) handshake every time and
left nothing to reuse under load. Why retries only on connection errors: then the upstream never
saw the request, so a retry cannot bill or answer twice. Keys are read here, in the replica, from
its environment or a secrets file; they go into request headers and nowhere else (not settings,
not logs, not error messages).
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from serve.settings import ServeSettings, UpstreamSettings


class UpstreamError(Exception):
    """A failure the client should see as `status` with a one-line `message`; `retry_after`: the
    seconds a rate-limiting provider said to wait, if it said."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def load_key(name: str, up: UpstreamSettings) -> str | None:
    """None when the upstream needs no key; a configured source that is empty is an error."""
    if up.api_key_file:
        path = Path(up.api_key_file)
        text = path.read_text().strip() if path.is_file() else ""
        if not text:
            raise UpstreamError(500, f"upstreams.{name}.api_key_file: {path} missing or empty")
        return text.splitlines()[0].strip()
    if up.api_key_env:
        key = os.environ.get(up.api_key_env, "").strip()
        if not key:
            raise UpstreamError(500, f"upstreams.{name}.api_key_env: ${up.api_key_env} is not set")
        return key
    return None


def auth_headers(name: str, up: UpstreamSettings) -> dict[str, str]:
    key = load_key(name, up)
    if key is None:
        return {}
    if up.api_key_header.lower() == "authorization":
        return {"Authorization": f"Bearer {key}"}
    return {up.api_key_header: key}


class UpstreamPool:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self._headers = {name: {**up.headers, **auth_headers(name, up)} for name, up in settings.upstreams.items()}
        self._urls = {name: _completions_url(up.base_url) for name, up in settings.upstreams.items()}
        self._session = None

    def _client(self):
        import aiohttp

        if self._session is None or self._session.closed:  # created in the replica's running loop
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30))
        return self._session

    def _url(self, model: str) -> str:
        if model not in self._urls:
            raise UpstreamError(502, f"upstreams: no upstream configured for model {model!r}")
        return self._urls[model]

    async def open(self, model: str, payload: dict[str, Any], stream: bool):
        """POST the chat request; the response is returned open (the caller reads and releases it).

        A 4xx the provider answered is the request's fault and passes through (the caller decides);
        its refusal of our key and every 5xx are the upstream's fault: 502."""
        import aiohttp

        s = self.settings
        url = self._url(model)
        up = s.upstreams[model]
        wait = up.timeout_s or s.upstream_timeout_s
        timeout = (aiohttp.ClientTimeout(total=None, connect=s.upstream_connect_timeout_s, sock_read=wait)
                   if stream else aiohttp.ClientTimeout(total=wait, connect=s.upstream_connect_timeout_s))
        payload = {**up.body, **payload, **({"model": up.model} if up.model else {})}  # the request's own fields win
        for attempt in range(s.upstream_retries + 1):
            try:
                resp = await self._client().post(url, json=payload, headers=self._headers[model], timeout=timeout)
                break
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
                if attempt == s.upstream_retries:
                    raise UpstreamError(502, f"upstream {model!r} unreachable after {attempt + 1} attempt(s): "
                                             f"{type(e).__name__}") from None
                await asyncio.sleep(0.1 * 2**attempt)
            except TimeoutError:  # asyncio's and aiohttp's read timeouts are this too
                raise UpstreamError(504, f"upstream {model!r} did not answer within {wait:g} s") from None
            except aiohttp.ClientError as e:
                raise UpstreamError(502, f"upstream {model!r} failed: {type(e).__name__}") from None
        if resp.status in (401, 403) or resp.status >= 500:
            resp.release()
            what = "refused the configured key" if resp.status in (401, 403) else "failed"
            raise UpstreamError(502, f"upstream {model!r} {what} (HTTP {resp.status})")
        return resp

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _completions_url(base_url: str) -> str:
    """The chat completions endpoint under a base URL, its query (Azure's api-version) kept after the path."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions"))
