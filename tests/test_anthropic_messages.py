"""Anthropic's Messages API translated to chat completions and back (serve/anthropic_messages.py),
without a service: the request's fields, the answer's blocks, and the stream's events put back
together by the protocol's rules (a block starts before its deltas, stops after them, and the
message stops last). Over HTTP through barp-auto: tests/test_chat_upstreams.py."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serve.anthropic_messages import chat_request, events_of, message_of
from chat_stream import chat_chunks, translated
from serve.openai_proxy import ChatProxyError
from serve.schemas import MessagesRequest

TOOL = {"name": "weather", "description": "today's weather", "input_schema": {"type": "object"}}


def _req(**fields) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "barp-auto", "max_tokens": 256,
                                           "messages": [{"role": "user", "content": "What is 2+2?"}], **fields})


def test_the_conversation_becomes_chat_messages_with_tool_uses_as_tool_calls():
    req = _req(system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}], messages=[
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "use the tool", "signature": "s"},
                                          {"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "sunny"}]},
                                     {"type": "text", "text": "And tomorrow?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "no data", "is_error": True}]},
        {"role": "user", "content": "Fine."}])
    assert chat_request(req).model_dump(exclude_unset=True)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t2", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: no data"},
        {"role": "user", "content": "Fine."}]


def test_the_requests_settings_take_their_chat_names_and_the_rest_stays_behind():
    body = chat_request(_req(tools=[TOOL], tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
                             temperature=0.2, top_p=0.9, top_k=5, stop_sequences=["END"], metadata={"user_id": "u1"},
                             thinking={"type": "enabled", "budget_tokens": 2048}, stream=True,
                             barp={"preference": 0.9})).model_dump(exclude_unset=True)
    assert body["max_completion_tokens"] == 256 and body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["stop"] == ["END"] and body["user"] == "u1" and body["parallel_tool_calls"] is False
    assert body["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"},
                                                               "description": "today's weather"}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["stream_options"] == {"include_usage": True} and body["barp"]["preference"] == 0.9
    assert not {"top_k", "thinking", "metadata", "system", "stop_sequences", "max_tokens"} & set(body)
    for anthropic, chat in (("any", "required"), ("auto", "auto"), ("none", "none")):
        assert chat_request(_req(tool_choice={"type": anthropic})).model_dump(exclude_unset=True)["tool_choice"] == chat


@pytest.mark.parametrize("fields, field", [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages.0.content.list[tagged-union"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages.0.content.list[tagged-union"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 1.5}, "temperature"),
    ({"messages": []}, "messages"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.tool.name"),  # which tool: the schema says so too
])
def test_what_has_no_chat_form_is_refused_naming_the_field(fields, field):
    with pytest.raises(ValidationError) as refused:
        _req(**fields)
    locs = [".".join(str(x) for x in e["loc"]) for e in refused.value.errors()]
    assert any(loc.startswith(field) for loc in locs), locs


def test_a_conversation_without_user_text_is_a_422():
    with pytest.raises(ChatProxyError) as refused:
        chat_request(_req(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]))
    assert refused.value.status == 422 and str(refused.value).startswith("messages: no user message with text")


def test_a_chat_answer_becomes_a_message_with_its_blocks_stop_reason_and_usage():
    barp = {"request_id": "0123abcd", "model": "chat-8b", "policy_version": 3, "preference": [0.7, 0.3]}
    msg = message_of(_req(), {"model": "chat-8b", "barp": barp, "choices": [{"finish_reason": "tool_calls", "message": {
        "content": "Checking.", "reasoning_content": "use it",
        "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                       {"id": "call_10", "type": "function", "function": {"name": "weather", "arguments": "not json"}}]}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}}})
    assert msg["id"] == "msg_0123abcd" and msg["type"] == "message" and msg["role"] == "assistant" and msg["barp"] == barp
    assert msg["content"] == [{"type": "thinking", "thinking": "use it", "signature": ""}, {"type": "text", "text": "Checking."},
                              {"type": "tool_use", "id": "call_9", "name": "weather", "input": {"city": "Paris"}},
                              {"type": "tool_use", "id": "call_10", "name": "weather", "input": {}}]
    assert msg["stop_reason"] == "tool_use" and msg["usage"] == {"input_tokens": 7, "output_tokens": 4,
                                                                 "cache_read_input_tokens": 2, "cache_creation_input_tokens": 0}
    for finish, stop in (("length", "max_tokens"), ("stop", "end_turn"), (None, "end_turn"), ("content_filter", "refusal")):
        assert message_of(_req(), {"choices": [{"finish_reason": finish, "message": {"content": "x"}}]})["stop_reason"] == stop



def _assemble(events: list[dict]) -> dict:
    """The message as Anthropic's stream rules build it: message_start first, each block started before
    its deltas and stopped after them, message_delta then message_stop last."""
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    message, open_blocks, partial = dict(events[0]["message"]), set(), {}
    message["content"] = []
    for e in events[1:-1]:
        if e["type"] == "content_block_start":
            assert e["index"] == len(message["content"]) and not open_blocks
            message["content"].append(dict(e["content_block"]))
            open_blocks.add(e["index"])
        elif e["type"] == "content_block_delta":
            assert e["index"] in open_blocks
            block, delta = message["content"][e["index"]], e["delta"]
            if delta["type"] == "input_json_delta":
                partial[e["index"]] = partial.get(e["index"], "") + delta["partial_json"]
            else:
                field = {"text_delta": "text", "thinking_delta": "thinking"}[delta["type"]]
                block[field] += delta[field]
        elif e["type"] == "content_block_stop":
            open_blocks.remove(e["index"])
            if e["index"] in partial:
                message["content"][e["index"]]["input"] = json.loads(partial[e["index"]])
        elif e["type"] == "message_delta":
            assert not open_blocks
            message.update(e["delta"])
            message["usage"] = {**message["usage"], **e["usage"]}
            message["barp"] = e.get("barp", message.get("barp"))
    return message


def test_a_chat_stream_becomes_the_messages_events():
    barp = {"request_id": "0123abcd", "model": "chat-8b", "policy_version": 3, "preference": [0.7, 0.3]}
    events, closed = translated(events_of, _req(stream=True, tools=[TOOL]), chat_chunks(
        {"role": "assistant", "reasoning_content": "Use"}, {"reasoning_content": " it."}, {"content": "Let me"}, {"content": " check."},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, finish="tool_calls", barp=barp,
        usage={"prompt_tokens": 5, "completion_tokens": 3}), price=lambda model, u: 0.5 if model == "chat-8b" else None)
    assert closed and events[0]["message"]["barp"] == barp and events[0]["message"]["content"] == []
    message = _assemble(events)
    assert message["content"] == [{"type": "thinking", "thinking": "Use it.", "signature": ""},
                                  {"type": "text", "text": "Let me check."},
                                  {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}]
    assert message["stop_reason"] == "tool_use" and message["usage"]["output_tokens"] == 3 and message["barp"]["cost"] == 0.5


def test_a_stream_cut_at_the_cap_says_max_tokens_and_a_failure_midway_ends_in_an_error_event():
    events, _ = translated(events_of, _req(stream=True), chat_chunks({"content": "Par"}, finish="length"))
    assert _assemble(events)["stop_reason"] == "max_tokens"
    events, closed = translated(events_of, _req(stream=True), chat_chunks({"content": "Par"}, error={
        "message": "upstream 'chat-8b' failed mid-stream: ClientPayloadError", "type": "upstream_error", "code": 502}))
    assert closed and events[-1] == {"type": "error", "error": {"type": "api_error",
                                                                "message": "upstream 'chat-8b' failed mid-stream: ClientPayloadError"}}


def test_two_alike_tool_uses_without_ids_are_two_blocks():
    call = {"type": "function", "function": {"name": "weather", "arguments": "{}"}}
    events, _ = translated(events_of, _req(stream=True, tools=[TOOL]), chat_chunks(
        {"tool_calls": [{"index": 0, **call}]}, {"tool_calls": [{"index": 1, **call}]}, finish="tool_calls"))
    blocks = _assemble(events)["content"]  # a block started at a place already taken fails here
    assert [b["type"] for b in blocks] == ["tool_use", "tool_use"] and blocks[0]["id"] != blocks[1]["id"]
