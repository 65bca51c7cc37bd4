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

from serve.chat_answer import Answer, Part, Usage, answer_of, retold, retold_stream
from serve.openai_proxy import ChatProxyError, prompt_of
from serve.schemas import (AudioPart, ChatCompletionRequest, FilePart, FunctionCallItem, FunctionCallOutputItem, ImagePart,
                           MessageItem, RefusalPart, ResponsesRequest, TextPart)

# Fields of the Responses API that chat completions do not take and that change nothing here.
_RESPONSES_ONLY = {"include", "truncation", "stream_options", "top_logprobs"}  # its declared fields are translated, never passed


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
    chat = ChatCompletionRequest.model_validate(body)
    try:
        prompt_of(chat)  # chat's own rule, told in this API's field
    except ChatProxyError:
        raise ChatProxyError(422, "input: no user message with text (the router reads the last one)") from None
    return chat


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": usage.output_tokens, "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens}


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_ITEM_ID = {"thinking": "rs", "text": "msg", "tool_call": "fc"}


class _Response:
    """The Response being answered: its id, the request's settings it echoes, and its output items."""

    def __init__(self, req: ResponsesRequest, request_id: str | None):
        self.key = (request_id or uuid.uuid4().hex).replace("-", "")
        self.id, self.created = f"resp_{self.key}", int(time.time())
        self.req = req

    def item_id(self, part: Part, index: int) -> str:
        return f"{_ITEM_ID[part.kind]}_{self.key}_{index}"

    def item(self, part: Part, index: int, status: str) -> dict[str, Any]:
        """An answer's part as the output item at `index`: thinking a reasoning item, text a message,
        a tool call a function_call."""
        item_id = self.item_id(part, index)
        if part.kind == "thinking":
            return {"type": "reasoning", "id": item_id, "summary": [], "content": [{"type": "reasoning_text", "text": part.text}],
                    "status": status}
        if part.kind == "tool_call":
            return {"type": "function_call", "id": item_id, "call_id": part.call_id or f"call_{self.key}_{index}",
                    "name": part.name, "arguments": part.text, "status": status}
        content = [{"type": "output_text", "text": part.text, "annotations": [], "logprobs": []}] if part.text or not part.refusal else []
        if part.refusal:
            content.append({"type": "refusal", "refusal": part.refusal})
        return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}

    def body(self, status: str, answer: Answer, error: dict | None = None) -> dict[str, Any]:
        req, extra = self.req, self.req.model_extra or {}
        reason = _INCOMPLETE.get(answer.finish or "")
        text = req.text.model_dump(by_alias=True, exclude_none=True) if req.text else {"format": {"type": "text"}}
        done = "in_progress" if status == "in_progress" else "completed"
        return {
            "id": self.id, "object": "response", "created_at": self.created,
            "status": "incomplete" if status == "completed" and reason else status,
            "error": error, "incomplete_details": {"reason": reason} if reason and status == "completed" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": answer.model or req.model,
            "output": [self.item(p, i, done) for i, p in enumerate(answer.parts)],
            "parallel_tool_calls": extra.get("parallel_tool_calls", True), "previous_response_id": None,
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
            "store": False, "temperature": extra.get("temperature"), "text": text,
            "tool_choice": (req.tool_choice if isinstance(req.tool_choice, str) or req.tool_choice is None
                            else req.tool_choice.model_dump()) or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "top_p": extra.get("top_p"), "truncation": "disabled", "usage": _usage(answer.usage),
            "user": extra.get("user"), "metadata": req.metadata or {},
            **({"barp": answer.barp} if answer.barp else {}),
        }


def response_of(req: ResponsesRequest, data: dict[str, Any]) -> dict[str, Any]:
    """A chat completion (JSON) as a Response: a reasoning model's thinking as a reasoning item, the
    message's text and refusal as a message item, each tool call as a function_call item."""
    answer = answer_of(data)
    return _Response(req, answer.barp.get("request_id") if answer.barp else None).body("completed", answer)


class _Events:
    """The Responses API's server-sent events for one answer, numbered in order."""

    def __init__(self):
        self.sequence = 0

    def __call__(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def events_of(req: ResponsesRequest, chunks: AsyncIterator[bytes], request_id: str | None, price) -> AsyncIterator[bytes]:
    """A chat completion's stream as the Responses API's events: response.created, then per part of
    the answer (serve/chat_answer.py) its item added, its deltas and its item done, and last
    response.completed (or .incomplete when the model stopped at the token cap, .failed when the
    provider failed mid-stream). When the client leaves, the chat stream is closed in turn, which
    closes the provider's call and frees its slot. `price(model, usage)`: the answer's dollar cost
    for `barp.cost`, or None."""
    resp, event = _Response(req, request_id), _Events()
    text_events = {"text": ("response.output_text.delta", "response.output_text.done"),
                   "thinking": ("response.reasoning_text.delta", "response.reasoning_text.done")}

    def step(kind: str, index: int, part: Part, piece: str) -> list[bytes]:
        item_id = resp.item_id(part, index)
        logprobs = {"logprobs": []} if part.kind == "text" else {}
        if kind == "open":
            item = resp.item(Part(part.kind, "", part.call_id, part.name), index, "in_progress")
            if part.kind == "tool_call":
                return [event("response.output_item.added", output_index=index, item=item)]
            return [event("response.output_item.added", output_index=index, item={**item, "content": []}),
                    event("response.content_part.added", item_id=item_id, output_index=index, content_index=0,
                          part=item["content"][0])]
        if kind == "delta" and part.kind == "tool_call":
            return [event("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=piece)]
        if kind == "delta":
            return [event(text_events[part.kind][0], item_id=item_id, output_index=index, content_index=0, delta=piece, **logprobs)]
        item = resp.item(part, index, "completed")
        if part.kind == "tool_call":
            return [event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                          arguments=part.text, name=part.name),
                    event("response.output_item.done", output_index=index, item=item)]
        return [event(text_events[part.kind][1], item_id=item_id, output_index=index, content_index=0, text=part.text, **logprobs),
                event("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=item["content"][0]),
                event("response.output_item.done", output_index=index, item=item)]

    def begin(answer: Answer) -> list[bytes]:
        skeleton = resp.body("in_progress", Answer(model=answer.model, barp=answer.barp))
        return [event("response.created", response=skeleton), event("response.in_progress", response=skeleton)]

    def failed(answer: Answer) -> list[bytes]:
        error = {"code": answer.error["type"], "message": answer.error["message"]}
        return [event("response.failed", response=resp.body("failed", answer, error))]

    def done(answer: Answer) -> list[bytes]:
        final = resp.body("completed", answer)
        return [event(f"response.{final['status']}", response=final)]

    return retold_stream(chunks, price, begin, step, failed, done)


def as_response(req: ResponsesRequest, answer, prices: dict[str, dict]):
    """The chat proxy's answer to `chat_request(req)` in the Responses API's shape. A provider's own
    error passes through as it came, as on the chat endpoint (both are OpenAI's shape)."""
    return retold(answer, prices, lambda chunks, request_id, price: events_of(req, chunks, request_id, price),
                  lambda data: response_of(req, data))
