"""OpenAI's Responses API (`POST /v1/responses`) answered by the chat models: the request becomes a
chat completion request, goes through the chat proxy (barp-auto routes it, fails over, prices and
judges it as any chat), and the answer comes back as a Response, or as the Responses API's stream
of events. OpenAI's SDKs and agent frameworks now speak this API first; the models barp routes to
mostly speak chat completions only, so the translation is here, once, and not in every provider.

Nothing is kept: a conversation is sent whole in `input` each time (`previous_response_id` is
refused with that advice), and the answer says `store: false`. Hosted tools are refused by the
schema; function tools become chat tools and their calls come back as `function_call` items.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from serve.openai_proxy import FAILED_OVER_HEADER, MODEL_HEADER, REQUEST_ID_HEADER, ChatProxyError, answer_cost
from serve.schemas import (AudioPart, ChatCompletionRequest, FilePart, FunctionCallItem, FunctionCallOutputItem, ImagePart,
                           MessageItem, RefusalPart, ResponsesRequest, TextPart)

# Fields of the Responses API that chat completions do not take and that change nothing here.
_RESPONSES_ONLY = {"input", "instructions", "max_output_tokens", "text", "reasoning", "tools", "tool_choice", "store",
                   "metadata", "include", "truncation", "stream_options", "top_logprobs", "previous_response_id",
                   "conversation", "prompt", "background", "barp", "model", "stream"}
_KEPT_HEADERS = (REQUEST_ID_HEADER, MODEL_HEADER, FAILED_OVER_HEADER)


def _chat_part(part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, RefusalPart):
        return {"type": "text", "text": part.refusal}
    if isinstance(part, ImagePart):
        return {"type": "image_url", "image_url": {"url": part.image_url, **({"detail": part.detail} if part.detail else {})}}
    if isinstance(part, AudioPart):
        return {"type": "input_audio", "input_audio": part.input_audio}
    if isinstance(part, FilePart):
        return {"type": "file", "file": {"file_data": part.file_data, **({"filename": part.filename} if part.filename else {})}}
    raise TypeError(type(part).__name__)


def _plain(content) -> str:
    """Text of content given as a string or parts: an assistant turn or a tool's output, which chat
    providers take as a string."""
    if isinstance(content, str):
        return content
    return "".join(p.text if isinstance(p, TextPart) else p.refusal if isinstance(p, RefusalPart) else "" for p in content)


def chat_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The input as chat messages: instructions first (as a system message; `developer` becomes
    `system` too, which every chat provider knows), a run of function calls as one assistant message
    with `tool_calls`, each call's output as a `tool` message. Reasoning items are dropped."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": req.instructions}] if req.instructions else []
    items = [MessageItem(role="user", content=req.input)] if isinstance(req.input, str) else req.input
    for item in items:
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            if isinstance(item.content, str) or role != "user":
                messages.append({"role": role, "content": _plain(item.content)})
            else:
                messages.append({"role": role, "content": [_chat_part(p) for p in item.content]})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _plain(item.output)})
    return messages


def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat completion request that answers `req`; a 422 naming the field for what has no chat form."""
    messages = chat_messages(req)
    if not any(m["role"] == "user" and _has_text(m["content"]) for m in messages):
        raise ChatProxyError(422, "input: no user message with text (the router reads the last one)")
    body: dict[str, Any] = {k: v for k, v in (req.model_extra or {}).items() if k not in _RESPONSES_ONLY}
    body |= {"model": req.model, "messages": messages, "stream": req.stream}
    if req.stream:  # a Response reports its usage; asking for it also prices the answer for feedback
        body["stream_options"] = {"include_usage": True}
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    if req.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, **{k: v for k, v in (("description", t.description), ("parameters", t.parameters),
                                                 ("strict", t.strict)) if v is not None}}} for t in req.tools]
    if req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice if isinstance(req.tool_choice, str) else {
            "type": "function", "function": {"name": req.tool_choice.name}}
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema": fmt.schema_, **{k: v for k, v in (("description", fmt.description),
                                                                          ("strict", fmt.strict)) if v is not None}}}
    elif fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    if req.text and req.text.verbosity:
        body["verbosity"] = req.text.verbosity
    if req.reasoning and req.reasoning.effort:
        body["reasoning_effort"] = req.reasoning.effort
    if req.barp is not None:
        body["barp"] = req.barp
    return ChatCompletionRequest.model_validate(body)


def _has_text(content) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any(isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"].strip() for p in content or [])


def _dict(value: Any) -> dict:
    """A provider's JSON object where one should be, else empty: a malformed answer is answered as far
    as it goes, never a 500 or a broken stream."""
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _usage(usage: Any) -> dict[str, Any] | None:
    """Chat's token usage as a Response's."""
    prompt, completion = _count(_dict(usage).get("prompt_tokens")), _count(_dict(usage).get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    cached = _count(_dict(usage.get("prompt_tokens_details")).get("cached_tokens")) or 0
    reasoning = _count(_dict(usage.get("completion_tokens_details")).get("reasoning_tokens")) or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": _count(usage.get("total_tokens")) or prompt + completion}


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class _Response:
    """The Response being answered: its id, the request's settings it echoes, and its ending."""

    def __init__(self, req: ResponsesRequest, request_id: str | None):
        self.key = (request_id or uuid.uuid4().hex).replace("-", "")
        self.id, self.created = f"resp_{self.key}", int(time.time())
        self.req = req
        self.model = req.model

    def item_id(self, kind: str, index: int) -> str:
        return f"{kind}_{self.key}_{index}"

    def body(self, status: str, output: list[dict], usage: dict | None = None, barp: dict | None = None,
             finish: str | None = None, error: dict | None = None) -> dict[str, Any]:
        req = self.req
        reason = _INCOMPLETE.get(finish or "")
        text = req.text.model_dump(by_alias=True, exclude_none=True) if req.text else {"format": {"type": "text"}}
        return {
            "id": self.id, "object": "response", "created_at": self.created,
            "status": "incomplete" if status == "completed" and reason else status,
            "error": error, "incomplete_details": {"reason": reason} if reason else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": self.model,
            "output": output, "parallel_tool_calls": (req.model_extra or {}).get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
            "store": False, "temperature": (req.model_extra or {}).get("temperature"), "text": text,
            "tool_choice": (req.tool_choice if isinstance(req.tool_choice, str) or req.tool_choice is None
                            else req.tool_choice.model_dump()) or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "top_p": (req.model_extra or {}).get("top_p"), "truncation": "disabled", "usage": usage,
            "user": (req.model_extra or {}).get("user"), "metadata": req.metadata or {},
            **({"barp": barp} if barp else {}),
        }


def _message_item(resp: _Response, index: int, text: str | None, refusal: str | None, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text or "", "annotations": [], "logprobs": []}] if text is not None else []
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": resp.item_id("msg", index), "status": status, "role": "assistant", "content": content}


def _reasoning_item(resp: _Response, index: int, text: str, status: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": resp.item_id("rs", index), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": status}


def _reasoning_of(message: dict[str, Any]) -> str | None:
    """A reasoning model's thinking in a chat message or delta: `reasoning_content` (DeepSeek, vLLM
    before 0.10, Qwen) or `reasoning` (vLLM since, OpenRouter)."""
    for key in ("reasoning_content", "reasoning"):
        if isinstance(message.get(key), str) and message[key]:
            return message[key]
    return None


def _call_item(resp: _Response, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": resp.item_id("fc", index), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def response_of(req: ResponsesRequest, answer: dict[str, Any]) -> dict[str, Any]:
    """A chat completion (JSON) as a Response: a reasoning model's thinking as a reasoning item, the
    message's text and refusal as a message item, each tool call as a function_call item."""
    barp = answer.get("barp") if isinstance(answer.get("barp"), dict) else None
    resp = _Response(req, barp.get("request_id") if barp else None)
    resp.model = answer.get("model") or req.model
    choices = answer.get("choices")
    choice = _dict(choices[0] if isinstance(choices, list) and choices else None)
    message = _dict(choice.get("message"))
    output: list[dict[str, Any]] = []
    if thought := _reasoning_of(message):
        output.append(_reasoning_item(resp, 0, thought, "completed"))
    text = message.get("content") if isinstance(message.get("content"), str) else None
    if text or message.get("refusal"):
        output.append(_message_item(resp, len(output), text, message.get("refusal"), "completed"))
    for call in message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []:
        call, fn = _dict(call), _dict(_dict(call).get("function"))
        output.append(_call_item(resp, len(output), str(call.get("id") or resp.item_id("call", len(output))),
                                 str(fn.get("name") or ""), str(fn.get("arguments") or ""), "completed"))
    return resp.body("completed", output, _usage(answer.get("usage")), barp, choice.get("finish_reason"))


class _Events:
    """The Responses API's server-sent events for one answer, numbered in order."""

    def __init__(self):
        self.sequence = 0

    def __call__(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def events_of(req: ResponsesRequest, chunks: AsyncIterator[bytes], request_id: str | None, price) -> AsyncIterator[bytes]:
    """A chat completion's stream of chunks as the Responses API's events. Items are opened as their
    first delta arrives (thinking: a reasoning item; text: a message; each tool call index: a
    function_call) and closed when the next item opens or the stream ends; the last event is response.completed (or .incomplete when the
    model stopped at the token cap, .failed when the provider failed mid-stream). When the client
    leaves, the chat stream is closed in turn, which closes the provider's call and frees its slot.
    `price(model, usage)`: the answer's dollar cost for `barp.cost`, or None."""
    resp, event = _Response(req, request_id), _Events()
    output: list[dict[str, Any]] = []
    open_item: dict[str, Any] | None = None  # the item now receiving deltas
    calls: dict[int, dict[str, Any]] = {}  # chat's tool-call index -> its function_call item
    barp: dict[str, Any] | None = None
    usage, finish, started = None, None, False

    def begin() -> list[bytes]:
        skeleton = resp.body("in_progress", [], barp=barp)
        return [event("response.created", response=skeleton), event("response.in_progress", response=skeleton)]

    def close() -> list[bytes]:
        nonlocal open_item
        item, open_item = open_item, None
        if item is None:
            return []
        index = output.index(item)
        item["status"] = "completed"
        if item["type"] in ("message", "reasoning"):
            part = item["content"][0]
            done = (event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                          text=part["text"], logprobs=[]) if item["type"] == "message" else
                    event("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0,
                          text=part["text"]))
            return [done, event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part),
                    event("response.output_item.done", output_index=index, item=item)]
        return [event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                      arguments=item["arguments"], name=item["name"]),
                event("response.output_item.done", output_index=index, item=item)]

    def open_(item: dict[str, Any]) -> list[bytes]:
        nonlocal open_item
        out = close()
        output.append(item)
        open_item = item
        if item["type"] == "function_call":
            out.append(event("response.output_item.added", output_index=len(output) - 1, item=item))
            return out
        out.append(event("response.output_item.added", output_index=len(output) - 1, item={**item, "content": []}))
        out.append(event("response.content_part.added", item_id=item["id"], output_index=len(output) - 1,
                         content_index=0, part={**item["content"][0], "text": ""}))
        return out

    def text(kind: str, piece: str) -> list[bytes]:
        """A piece of the answer's text or of its reasoning, in the item it belongs to (opened if need be)."""
        out = []
        if open_item is None or open_item["type"] != kind:
            out += open_(_message_item(resp, len(output), "", None, "in_progress") if kind == "message"
                         else _reasoning_item(resp, len(output), "", "in_progress"))
        open_item["content"][0]["text"] += piece
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        out.append(event(name, item_id=open_item["id"], output_index=len(output) - 1, content_index=0, delta=piece, **extra))
        return out

    try:
        async for line in chunks:
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            if not started:
                barp = chunk.get("barp") if isinstance(chunk.get("barp"), dict) else None
                resp.model = chunk.get("model") or req.model
                for e in begin():
                    yield e
                started = True
            if "error" in chunk:  # the provider failed mid-stream (serve/openai_proxy.py told it so)
                err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
                for e in close():
                    yield e
                failed = {"code": str(err.get("type") or "server_error"), "message": str(err.get("message", ""))}
                yield event("response.failed", response=resp.body("failed", output, usage, barp, error=failed))
                return
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
            for choice in chunk.get("choices") if isinstance(chunk.get("choices"), list) else []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = _dict(choice.get("delta"))
                if thought := _reasoning_of(delta):
                    for e in text("reasoning", thought):
                        yield e
                if isinstance(delta.get("content"), str) and delta["content"]:
                    for e in text("message", delta["content"]):
                        yield e
                for call in delta.get("tool_calls") if isinstance(delta.get("tool_calls"), list) else []:
                    call = _dict(call)
                    index, fn = call.get("index", 0) if isinstance(call.get("index", 0), int) else 0, _dict(call.get("function"))
                    if index not in calls:
                        calls[index] = _call_item(resp, len(output), str(call.get("id") or resp.item_id("call", len(output))),
                                                  str(fn.get("name") or ""), "", "in_progress")
                        for e in open_(calls[index]):
                            yield e
                    item = calls[index]
                    if isinstance(fn.get("arguments"), str) and fn["arguments"]:
                        item["arguments"] += fn["arguments"]
                        yield event("response.function_call_arguments.delta", item_id=item["id"],
                                    output_index=output.index(item), delta=fn["arguments"])
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        if not started:
            for e in begin():
                yield e
        for e in close():
            yield e
        if barp is not None and usage is not None and (cost := price(barp.get("model"), usage)) is not None:
            barp = {**barp, "cost": cost}
        final = resp.body("completed", output, usage, barp, finish)
        yield event(f"response.{final['status']}", response=final)
    finally:
        await chunks.aclose()


def as_response(req: ResponsesRequest, answer, prices: dict[str, dict]):
    """The chat proxy's answer to `chat_request(req)` in the Responses API's shape. A provider's own
    error (a JSON answer other than 200) passes through as it came, as on the chat endpoint."""
    headers = {k: v for k, v in answer.headers.items() if k in _KEPT_HEADERS}
    if isinstance(answer, StreamingResponse):
        def price(model, usage):
            tokens = {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"]}
            return answer_cost(tokens, prices.get(model))

        return StreamingResponse(events_of(req, answer.body_iterator, headers.get(REQUEST_ID_HEADER), price),
                                 media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
    data = json.loads(answer.body)
    if answer.status_code != 200 or not isinstance(data, dict):
        return answer
    return JSONResponse(response_of(req, data), headers=headers)
