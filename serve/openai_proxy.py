"""OpenAI-compatible `POST /v1/chat/completions` with model `barp-auto`: route, then forward.

The last user message is the prompt the router sees; the request goes unchanged (but for
`model`) to the chosen model's OpenAI-compatible upstream (`upstreams:` in the serve config),
and the upstream's answer comes back with a `barp` field carrying the request_id to post
feedback against.
"""
from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from serve.schemas import RouteRequest, RouteResponse

AUTO = "barp-auto"


class ChatProxyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _prompt_of(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise ChatProxyError(422, "messages: must be a non-empty list")
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):  # multi-part content: keep the text parts
                content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, str) and content.strip():
                return content
    raise ChatProxyError(422, "messages: no user message with text content")


async def forward_chat(api, body: Any) -> JSONResponse:
    import aiohttp

    if not isinstance(body, dict):
        raise ChatProxyError(422, "body: must be a JSON object")
    model = body.get("model")
    if model != AUTO and model not in api.models:
        raise ChatProxyError(422, f"model: must be {AUTO!r} or one of {api.models}, got {model!r}")
    prompt = _prompt_of(body.get("messages"))
    options = body.get("barp") or {}
    if not isinstance(options, dict):
        raise ChatProxyError(422, "barp: must be an object like {preference, mode, candidates}")

    barp_info: dict[str, Any] = {}
    if model == AUTO:
        try:
            req = RouteRequest(prompt=prompt, **options)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ()))
            raise ChatProxyError(422, f"barp.{loc}: {err.get('msg')}") from None
        routed = await api.route(req)
        if not isinstance(routed, RouteResponse):
            return routed  # an error response, already shaped
        model = routed.model
        barp_info = {"request_id": routed.request_id, "model": model, "policy_version": routed.policy_version}

    base = api.settings.upstreams.get(model)
    if not base:
        raise ChatProxyError(502, f"upstreams: no upstream configured for model {model!r}")
    payload = {k: v for k, v in body.items() if k != "barp"}
    payload["model"] = model
    if payload.get("stream"):
        raise ChatProxyError(422, "stream: streaming is not supported by barp-auto yet")
    timeout = aiohttp.ClientTimeout(total=api.settings.upstream_timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(base.rstrip("/") + "/chat/completions", json=payload) as resp:
                status = resp.status
                try:
                    data = await resp.json(content_type=None)
                except Exception:  # noqa: BLE001
                    raise ChatProxyError(502, f"upstream {model!r} returned non-JSON (HTTP {status})") from None
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ChatProxyError(502, f"upstream {model!r} unreachable: {type(e).__name__}") from None
    if isinstance(data, dict) and barp_info:
        data["barp"] = barp_info
    return JSONResponse(status_code=status, content=data)
