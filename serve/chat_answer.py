"""A chat completion's answer as its parts in order: a reasoning model's thinking, the text, each tool
call. The Responses API (items) and Anthropic's Messages API (content blocks) both answer in parts
where chat answers in one message or in deltas; this reads chat once for both. A provider's malformed
answer is read as far as it goes (a wrong type is taken as absent), never a 500 or a broken stream.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal

from fastapi.responses import JSONResponse, StreamingResponse

from serve.openai_proxy import FAILED_OVER_HEADER, MODEL_HEADER, REQUEST_ID_HEADER, answer_cost


def dict_of(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def list_of(value: Any) -> list:
    return value if isinstance(value, list) else []


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def reasoning_of(message: dict[str, Any]) -> str | None:
    """A reasoning model's thinking in a chat message or delta: `reasoning_content` (DeepSeek, vLLM
    before 0.10, Qwen) or `reasoning` (vLLM since, OpenRouter)."""
    for key in ("reasoning_content", "reasoning"):
        if isinstance(message.get(key), str) and message[key]:
            return message[key]
    return None


@dataclass
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0  # of the input, read from the provider's prompt cache
    reasoning_tokens: int = 0  # of the output
    total_tokens: int = 0

    @classmethod
    def of(cls, usage: Any) -> "Usage | None":
        """Chat's `usage`, or None without both counts."""
        usage = dict_of(usage)
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        if prompt is None or completion is None:
            return None
        return cls(prompt, completion, _count(dict_of(usage.get("prompt_tokens_details")).get("cached_tokens")) or 0,
                   _count(dict_of(usage.get("completion_tokens_details")).get("reasoning_tokens")) or 0,
                   _count(usage.get("total_tokens")) or prompt + completion)

    def chat(self) -> dict[str, int]:
        """Back in chat's names, as the service prices an answer (serve.openai_proxy.answer_cost)."""
        return {"prompt_tokens": self.input_tokens, "completion_tokens": self.output_tokens}


@dataclass
class Part:
    kind: Literal["thinking", "text", "tool_call"]
    text: str = ""  # the thinking or the text; a tool call's arguments (JSON text)
    call_id: str = ""
    name: str = ""
    refusal: str | None = None  # a text part's refusal (JSON answers)


@dataclass
class Answer:
    parts: list[Part] = field(default_factory=list)
    finish: str | None = None  # chat's finish_reason: stop, length, tool_calls, content_filter
    usage: Usage | None = None
    model: Any = None  # as the provider named it
    barp: dict[str, Any] | None = None  # the routing, when barp-auto routed it


def answer_of(data: dict[str, Any]) -> Answer:
    """A chat completion (JSON) as its parts: thinking, then text (and refusal), then tool calls."""
    choices = list_of(data.get("choices"))
    choice = dict_of(choices[0] if choices else None)
    message = dict_of(choice.get("message"))
    answer = Answer(finish=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None,
                    usage=Usage.of(data.get("usage")), model=data.get("model"),
                    barp=data.get("barp") if isinstance(data.get("barp"), dict) else None)
    if thought := reasoning_of(message):
        answer.parts.append(Part("thinking", thought))
    text = message.get("content") if isinstance(message.get("content"), str) else None
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else None
    if text or refusal:
        answer.parts.append(Part("text", text or "", refusal=refusal))
    for call in list_of(message.get("tool_calls")):
        call, fn = dict_of(call), dict_of(dict_of(call).get("function"))
        answer.parts.append(Part("tool_call", str(fn.get("arguments") or ""), str(call.get("id") or ""), str(fn.get("name") or "")))
    return answer


Step = tuple  # (kind, index, part, piece): "open" / "delta" / "close", the part's place in the answer, the delta's text


class StreamedAnswer(Answer):
    """A chat stream folded into parts as its chunks arrive; `feed` says what each chunk changed, in
    order: a part opens at its first delta (thinking, text, or a tool call's index) and closes when
    the next part opens or the stream ends (`end`). Each step names its part's place, since two parts
    may hold the same (two calls of one tool, with no ids, alike)."""

    def __init__(self):
        super().__init__()
        self.started = False
        self.error: dict[str, Any] | None = None  # the provider failed mid-stream (serve/openai_proxy.py says so)
        self._open: int | None = None  # the place of the part receiving deltas
        self._calls: dict[int, int] = {}  # chat's tool-call index -> its part's place

    def feed(self, chunk: dict[str, Any]) -> list[Step]:
        if not self.started:
            self.started = True
            self.model = chunk.get("model")
            self.barp = chunk.get("barp") if isinstance(chunk.get("barp"), dict) else None
        if "error" in chunk:
            err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            self.error = {"type": str(err.get("type") or "server_error"), "message": str(err.get("message", ""))}
            return self.end()
        if chunk.get("usage"):
            self.usage = Usage.of(chunk["usage"]) or self.usage
        steps: list[Step] = []
        for choice in list_of(chunk.get("choices")):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = dict_of(choice.get("delta"))
            if thought := reasoning_of(delta):
                steps += self._text("thinking", thought)
            if isinstance(delta.get("content"), str) and delta["content"]:
                steps += self._text("text", delta["content"])
            for call in list_of(delta.get("tool_calls")):
                call = dict_of(call)
                index = call.get("index", 0) if isinstance(call.get("index", 0), int) else 0
                fn = dict_of(call.get("function"))
                if index not in self._calls:
                    steps += self._start(Part("tool_call", "", str(call.get("id") or ""), str(fn.get("name") or "")))
                    self._calls[index] = self._open
                if isinstance(fn.get("arguments"), str) and fn["arguments"]:
                    place = self._calls[index]
                    self.parts[place].text += fn["arguments"]
                    steps.append(("delta", place, self.parts[place], fn["arguments"]))
            if isinstance(choice.get("finish_reason"), str):
                self.finish = choice["finish_reason"]
        return steps

    def end(self) -> list[Step]:
        place, self._open = self._open, None
        return [("close", place, self.parts[place], "")] if place is not None else []

    def _start(self, part: Part) -> list[Step]:
        steps = self.end()
        self.parts.append(part)
        self._open = len(self.parts) - 1
        return [*steps, ("open", self._open, part, "")]

    def _text(self, kind: str, piece: str) -> list[Step]:
        steps = self._start(Part(kind)) if self._open is None or self.parts[self._open].kind != kind else []
        self.parts[self._open].text += piece
        return [*steps, ("delta", self._open, self.parts[self._open], piece)]


async def chunks_of(lines: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a chat stream's `data:` lines ([DONE] and anything unreadable skipped).
    Closing this closes `lines`, so a client that leaves closes the provider's call in turn."""
    try:
        async for line in lines:
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                continue
            if isinstance(chunk, dict):
                yield chunk
    finally:
        await lines.aclose()


async def retold_stream(chunks: AsyncIterator[bytes], price: Callable, begin: Callable, step: Callable, failed: Callable,
                        done: Callable) -> AsyncIterator[bytes]:
    """A chat stream told as another API's events, in the order each such API keeps: `begin(answer)` at
    the first chunk (or at the end of a stream with none), `step(kind, place, part, piece)` for each
    change (`StreamedAnswer.feed`), and last `failed(answer)` when the provider failed midway, else
    `done(answer)` with the answer priced into `barp.cost` when `price(model, usage)` can. Each returns
    the events to send. Closing this (the client left) closes the chat stream, and so the provider's
    call and its slot."""
    answer, stream = StreamedAnswer(), chunks_of(chunks)

    def changes(started: bool, steps: list[Step]) -> list[bytes]:
        return [*([] if started else begin(answer)), *(event for s in steps for event in step(*s))]

    try:
        async for chunk in stream:
            started = answer.started
            for event in changes(started, answer.feed(chunk)):
                yield event
            if answer.error is not None:
                for event in failed(answer):
                    yield event
                return
        for event in changes(answer.started, answer.end()):
            yield event
        if answer.barp is not None and answer.usage is not None and (cost := price(answer.barp.get("model"), answer.usage)) is not None:
            answer.barp = {**answer.barp, "cost": cost}
        for event in done(answer):
            yield event
    finally:
        await stream.aclose()


_KEPT_HEADERS = (REQUEST_ID_HEADER, MODEL_HEADER, FAILED_OVER_HEADER)


def retold(answer, prices: dict[str, dict], stream_as: Callable, json_as: Callable, error_as: Callable | None = None):
    """The chat proxy's answer told in another API's shape: a stream by `stream_as(chunks, request_id,
    price)`, a JSON answer by `json_as(data)`, a provider's own error (a JSON answer other than 200)
    by `error_as(status, data)` or as it came. The `x-barp-*` headers stay; `price(model, usage)` is
    the answer's dollar cost at the served prices, as chat prices it."""
    headers = {k: v for k, v in answer.headers.items() if k in _KEPT_HEADERS}
    if isinstance(answer, StreamingResponse):
        def price(model, usage: Usage) -> float | None:
            return answer_cost(usage.chat(), prices.get(model))

        return StreamingResponse(stream_as(answer.body_iterator, headers.get(REQUEST_ID_HEADER), price),
                                 media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
    data = json.loads(answer.body)
    if answer.status_code != 200 or not isinstance(data, dict):
        if error_as is None:
            return answer
        retry = {k: v for k, v in answer.headers.items() if k == "retry-after"}
        return JSONResponse(status_code=answer.status_code, content=error_as(answer.status_code, data), headers={**headers, **retry})
    return JSONResponse(json_as(data), headers=headers)
