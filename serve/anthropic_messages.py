"""Anthropic's Messages API (`POST /v1/messages`) answered by the chat models: the request becomes a
chat completion request, goes through the chat proxy (barp-auto routes it, fails over, prices and
judges it as any chat), and the answer comes back as an Anthropic message, or as the Messages API's
stream of events. Anthropic's SDKs and the tools built on them (Claude Code with
`ANTHROPIC_BASE_URL`) then reach every model barp routes to; the keys may come as `x-api-key`.

Server tools are refused; client tools become chat tools and their calls come back as `tool_use`
blocks. `thinking` and `cache_control` have no chat form and are not sent; a reasoning model's
thinking comes back as `thinking` blocks (with no signature: there is none to give).
"""
from __future__ import annotations

import json
import uuid
from typing import Any, AsyncIterator

from serve.chat_answer import Answer, Part, Usage, answer_of, dict_of, retold, retold_stream
from serve.openai_proxy import ChatProxyError, prompt_of
from serve.schemas import (AnthropicImage, AnthropicMessage, AnthropicText, AnthropicToolResult, AnthropicToolUse,
                           ChatCompletionRequest, CountTokensRequest, MessagesRequest, messages_error)

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
         "content_filter": "refusal"}


def _image(block: AnthropicImage) -> dict[str, Any]:
    src = block.source
    url = src.url if src.type == "url" else f"data:{src.media_type};base64,{src.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _text(blocks) -> str:
    if isinstance(blocks, str):
        return blocks
    return "\n".join(b.text for b in blocks if isinstance(b, AnthropicText))


def chat_messages(system, messages: list[AnthropicMessage]) -> list[dict[str, Any]]:
    """The conversation as chat messages: the system prompt first; a user turn's tool results as `tool`
    messages (before the rest of the turn, where Anthropic puts them), its text and images as one user
    message; an assistant turn's text as its content and its tool uses as `tool_calls`. Thinking is dropped."""
    out: list[dict[str, Any]] = [{"role": "system", "content": _text(system)}] if system else []
    for msg in messages:
        if isinstance(msg.content, str):
            out.append({"role": msg.role, "content": msg.content})
            continue
        if msg.role == "assistant":
            calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                     for b in msg.content if isinstance(b, AnthropicToolUse)]
            text = _text(msg.content)
            out.append({"role": "assistant", "content": text if text or not calls else None, **({"tool_calls": calls} if calls else {})})
            continue
        for b in msg.content:
            if isinstance(b, AnthropicToolResult):
                content = _text(b.content)
                out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": f"Error: {content}" if b.is_error else content})
        parts = [{"type": "text", "text": b.text} if isinstance(b, AnthropicText) else _image(b)
                 for b in msg.content if isinstance(b, (AnthropicText, AnthropicImage))]
        if parts:
            out.append({"role": "user", "content": parts})
    return out


def chat_request(req: MessagesRequest) -> ChatCompletionRequest:
    """The chat completion request that answers `req`."""
    messages = chat_messages(req.system, req.messages)
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream, "max_completion_tokens": req.max_tokens}
    if req.stream:  # the answer reports its usage; asking for it also prices the answer for feedback
        body["stream_options"] = {"include_usage": True}
    for name, chat_name in (("temperature", "temperature"), ("top_p", "top_p"), ("stop_sequences", "stop")):
        if getattr(req, name) is not None:
            body[chat_name] = getattr(req, name)
    if req.tools:
        body["tools"] = [{"type": "function", "function": {"name": t.name, "parameters": t.input_schema,
                                                           **({"description": t.description} if t.description else {})}}
                         for t in req.tools]
    if (choice := req.tool_choice) is not None:
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type) or {
            "type": "function", "function": {"name": choice.name}}
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if isinstance(user := dict_of(req.metadata).get("user_id"), str):
        body["user"] = user
    if req.barp is not None:
        body["barp"] = req.barp
    chat = ChatCompletionRequest.model_validate(body)
    try:
        prompt_of(chat)  # chat's own rule
    except ChatProxyError:
        raise ChatProxyError(422, "messages: no user message with text (the router reads the last one)") from None
    return chat


def _usage(usage: Usage | None) -> dict[str, int]:
    """Anthropic counts input read from the prompt cache apart from the rest of the input."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {"input_tokens": usage.input_tokens - usage.cached_tokens, "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cached_tokens, "cache_creation_input_tokens": 0}


def _block(part: Part, index: int, key: str) -> dict[str, Any]:
    """An answer's part as a content block. A tool call's arguments that are not a JSON object (a
    provider's malformed call) give an empty input."""
    if part.kind == "thinking":
        return {"type": "thinking", "thinking": part.text, "signature": ""}
    if part.kind == "tool_call":
        try:
            args = json.loads(part.text) if part.text else {}
        except ValueError:
            args = {}
        return {"type": "tool_use", "id": part.call_id or f"toolu_{key}_{index}", "name": part.name,
                "input": args if isinstance(args, dict) else {}}
    return {"type": "text", "text": part.text or part.refusal or ""}


def _message(key: str, answer: Answer, req: MessagesRequest, content: list[dict]) -> dict[str, Any]:
    return {"id": f"msg_{key}", "type": "message", "role": "assistant", "model": answer.model or req.model, "content": content,
            "stop_reason": _STOP.get(answer.finish or "", "end_turn") if answer.finish else None, "stop_sequence": None,
            "usage": _usage(answer.usage), **({"barp": answer.barp} if answer.barp else {})}


def _key(request_id: str | None) -> str:
    return (request_id or uuid.uuid4().hex).replace("-", "")


def message_of(req: MessagesRequest, data: dict[str, Any]) -> dict[str, Any]:
    """A chat completion (JSON) as an Anthropic message: thinking, text and tool_use blocks in order."""
    answer = answer_of(data)
    answer.finish = answer.finish or "stop"
    key = _key(answer.barp.get("request_id") if answer.barp else None)
    return _message(key, answer, req, [_block(p, i, key) for i, p in enumerate(answer.parts)])


def _event(kind: str, **fields) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def events_of(req: MessagesRequest, chunks: AsyncIterator[bytes], request_id: str | None, price) -> AsyncIterator[bytes]:
    """A chat completion's stream as the Messages API's events: message_start; per part of the answer
    (serve/chat_answer.py) content_block_start, its deltas and content_block_stop; message_delta with
    the stop reason and usage; message_stop. A provider failing mid-stream ends it with an `error`
    event. When the client leaves, the chat stream is closed in turn, which closes the provider's
    call and frees its slot. `price(model, usage)`: the answer's dollar cost for `barp.cost`, or None."""
    key = _key(request_id)
    deltas = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking"), "tool_call": ("input_json_delta", "partial_json")}

    def step(kind: str, index: int, part: Part, piece: str) -> list[bytes]:
        if kind == "open":
            block = _block(Part(part.kind, "", part.call_id, part.name), index, key)
            return [_event("content_block_start", index=index, content_block=block)]
        if kind == "delta":
            delta_type, field = deltas[part.kind]
            return [_event("content_block_delta", index=index, delta={"type": delta_type, field: piece})]
        return [_event("content_block_stop", index=index)]

    def begin(answer: Answer) -> list[bytes]:
        return [_event("message_start", message=_message(key, Answer(model=answer.model, barp=answer.barp), req, []))]

    def failed(answer: Answer) -> list[bytes]:
        return [_event("error", error={"type": "api_error", "message": answer.error["message"]})]

    def done(answer: Answer) -> list[bytes]:
        priced = {"barp": answer.barp} if answer.barp is not None and "cost" in answer.barp else {}
        return [_event("message_delta", delta={"stop_reason": _STOP.get(answer.finish or "stop", "end_turn"), "stop_sequence": None},
                       usage=_usage(answer.usage), **priced),
                _event("message_stop")]

    return retold_stream(chunks, price, begin, step, failed, done)


def as_message(req: MessagesRequest, answer, prices: dict[str, dict]):
    """The chat proxy's answer to `chat_request(req)` in the Messages API's shape; a provider's own
    error keeps its status and message, in Anthropic's error shape."""
    def error(status: int, data: Any) -> dict:
        message = dict_of(dict_of(data).get("error")).get("message")
        return messages_error(status, message if isinstance(message, str) else json.dumps(data))

    return retold(answer, prices, lambda chunks, request_id, price: events_of(req, chunks, request_id, price),
                  lambda data: message_of(req, data), error)


def counted_tokens(api, req: CountTokensRequest) -> int:
    """The request's input tokens as the router counts them (its own tokenizer: an estimate of the
    provider's count): system, messages, and the tools' names, descriptions and schemas."""
    texts = [_text(req.system)] if req.system else []
    for msg in req.messages:
        blocks = [msg.content] if isinstance(msg.content, str) else msg.content
        for b in blocks:
            if isinstance(b, str):
                texts.append(b)
            elif isinstance(b, AnthropicText):
                texts.append(b.text)
            elif isinstance(b, AnthropicToolUse):
                texts.append(f"{b.name} {json.dumps(b.input)}")
            elif isinstance(b, AnthropicToolResult):
                texts.append(_text(b.content))
    texts += [f"{t.name} {t.description or ''} {json.dumps(t.input_schema)}" for t in req.tools or []]
    return api.limiter.count("\n".join(texts))
