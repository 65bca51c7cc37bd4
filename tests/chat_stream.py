"""A chat completion's stream as a provider sends it, and the events another API's translation of it
yields, for the tests of serve/responses_api.py and serve/anthropic_messages.py."""
from __future__ import annotations

import asyncio
import json


def chat_chunks(*deltas: dict, finish: str = "stop", usage: dict | None = None, barp: dict | None = None,
                error: dict | None = None) -> list[bytes]:
    """The `data:` lines of a chat stream: one chunk per delta (the first carrying `barp`), then the
    finish, the usage chunk, a blank line and [DONE]; or, with `error`, the relay's mid-stream error."""
    base = {"id": "c", "object": "chat.completion.chunk", "model": "chat-8b"}
    lines = [b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}],
                                     **({"barp": barp} if barp and i == 0 else {})}).encode() + b"\n" for i, d in enumerate(deltas)]
    if error:
        return [*lines, b"data: " + json.dumps({"error": error}).encode() + b"\n"]
    lines.append(b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}).encode() + b"\n")
    if usage:
        lines.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n")
    return [*lines, b"\n", b"data: [DONE]\n"]


def translated(events_of, req, lines: list[bytes], price=lambda model, usage: None) -> tuple[list[dict], bool]:
    """(the events `events_of` makes of `lines`, each an `event:` line naming its data's type; whether
    the chat stream was closed by the time they ended, not at the event loop's shutdown)."""
    closed = []

    async def chat():
        try:
            for line in lines:
                yield line
        finally:
            closed.append(True)

    async def run():
        out = []
        async for raw in events_of(req, chat(), "0123abcd", price):
            kind, data = raw.decode().split("\n", 1)
            event = json.loads(data.removeprefix("data: "))
            assert raw.endswith(b"\n\n") and kind == f"event: {event['type']}", raw
            out.append(event)
        return out, bool(closed)

    return asyncio.run(run())
