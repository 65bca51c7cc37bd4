"""The Responses API's translation to chat completions and back (serve/responses_api.py), without a
service: the request's fields, the answer's items, and the stream's events checked by the official
OpenAI SDK's own stream reader. Over HTTP through barp-auto: tests/test_chat_upstreams.py."""
from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from chat_stream import chat_chunks, translated
from serve.openai_proxy import ChatProxyError
from serve.responses_api import chat_request, events_of, response_of
from serve.schemas import ResponsesRequest

TOOL = {"type": "function", "name": "weather", "description": "today's weather", "parameters": {"type": "object"}}


def _req(**fields) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "barp-auto", "input": "What is 2+2?", **fields})


def test_the_input_becomes_chat_messages_with_function_calls_as_tool_calls():
    req = _req(instructions="Be brief.", input=[
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"},
                                                        {"type": "input_image", "image_url": "https://x/p.png", "detail": "low"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},  # an earlier answer's reasoning: dropped
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"city":"Lyon"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Paris: sunny."}]},
        {"role": "user", "content": "And tomorrow?"}])
    messages = chat_request(req).model_dump(exclude_unset=True)["messages"]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "https://x/p.png", "detail": "low"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "assistant", "content": "Paris: sunny."},
        {"role": "user", "content": "And tomorrow?"}]


def test_the_requests_settings_take_their_chat_names_and_responses_only_fields_stay_behind():
    req = _req(max_output_tokens=64, tools=[TOOL], tool_choice={"type": "function", "name": "weather"},
               text={"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True},
                     "verbosity": "low"},
               reasoning={"effort": "low"}, stream=True, temperature=0.2, user="u1", store=True, metadata={"a": "b"},
               include=["message.output_text.logprobs"], truncation="disabled", barp={"preference": 0.9})
    body = chat_request(req).model_dump(exclude_unset=True)
    assert body["max_completion_tokens"] == 64 and body["temperature"] == 0.2 and body["user"] == "u1"
    assert body["tools"] == [{"type": "function", "function": {"name": "weather", "description": "today's weather",
                                                               "parameters": {"type": "object"}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"},
                                                                              "strict": True}}
    assert body["verbosity"] == "low" and body["reasoning_effort"] == "low"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}  # a Response reports usage
    assert body["barp"]["preference"] == 0.9
    assert not {"store", "metadata", "include", "truncation", "input", "instructions", "text", "reasoning"} & set(body)
    assert chat_request(_req(text={"format": {"type": "json_object"}})).model_dump(exclude_unset=True)["response_format"] == {
        "type": "json_object"}


@pytest.mark.parametrize("fields, field", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"tools": [{"type": "web_search"}]}, "tools.0"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.items.0"),
    ({"input": 7}, "input"),
    ({"input": " "}, "input.text"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.json_schema.name"),
    ({"store": 0}, "store"),
])
def test_what_has_no_chat_form_is_refused_naming_the_field(fields, field):
    with pytest.raises(ValidationError) as refused:
        _req(**fields)
    assert field in [".".join(str(x) for x in e["loc"]) for e in refused.value.errors()], refused.value.errors()


def test_text_is_blank_by_the_schemas_rule_not_pythons():
    """JSON Schema's \\S (ECMA's) takes "\\x1c" as text, Python's isspace() does not: a schema-valid prompt is routed."""
    assert chat_request(_req(input="\x1c")).messages[-1].content == "\x1c"
    with pytest.raises(ValidationError):
        _req(input="\u3000")  # blank by both


def test_an_input_without_user_text_is_a_422_naming_the_field():
    with pytest.raises(ChatProxyError) as refused:
        chat_request(_req(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/p.png"}]}]))
    assert refused.value.status == 422 and str(refused.value).startswith("input: no user message with text")


def test_a_chat_answer_becomes_a_response_with_its_items_usage_and_ending():
    barp = {"request_id": "0123abcd", "model": "chat-8b", "policy_version": 3, "preference": [0.7, 0.3], "cost": 1e-6}
    answer = {"model": "chat-8b", "barp": barp, "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                                                          "prompt_tokens_details": {"cached_tokens": 2}},
              "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                  "role": "assistant", "content": "Checking.",
                  "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}}]}
    resp = response_of(_req(metadata={"k": "v"}, tools=[TOOL]), answer)
    assert resp["id"] == "resp_0123abcd" and resp["status"] == "completed" and resp["store"] is False
    assert resp["barp"] == barp and resp["metadata"] == {"k": "v"} and resp["model"] == "chat-8b"
    message, call = resp["output"]
    assert message["type"] == "message" and message["content"][0]["text"] == "Checking."
    assert call == {"type": "function_call", "id": "fc_0123abcd_1", "call_id": "call_9", "name": "weather", "arguments": "{}",
                    "status": "completed"}
    assert resp["usage"] == {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0}, "output_tokens": 4,
                             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}
    cut = response_of(_req(), {"choices": [{"finish_reason": "length", "message": {"content": "Partial"}}]})
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    from openai.types.responses import Response

    assert Response.model_validate(resp).output_text == "Checking."  # the SDK's own model reads it



def _read_with_the_sdk(events: list[dict]):
    """The final Response as the official SDK's stream reader builds it, checking the events' order and ids."""
    from openai._models import construct_type_unchecked
    from openai._types import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    state = ResponseStreamState(input_tools=[TOOL], text_format=omit)
    for e in events:
        state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=e))
    return state._completed_response


def test_a_chat_stream_becomes_the_responses_events_the_sdk_reads():
    barp = {"request_id": "0123abcd", "model": "chat-8b", "policy_version": 3, "preference": [0.7, 0.3]}
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    events, closed = translated(events_of, _req(stream=True, tools=[TOOL]), chat_chunks(
        {"role": "assistant", "content": "Let me"}, {"content": " check."},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, finish="tool_calls", usage=usage, barp=barp),
        price=lambda model, u: 0.5 if model == "chat-8b" and u.output_tokens == 3 else None)
    assert closed and [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert events[0]["response"]["barp"] == barp and events[0]["response"]["status"] == "in_progress"
    final = _read_with_the_sdk(events)
    assert final.output_text == "Let me check." and final.usage.output_tokens == 3
    call = final.output[1]
    assert (call.type, call.call_id, call.name, call.arguments) == ("function_call", "call_1", "weather", '{"city":"Paris"}')
    assert events[-1]["response"]["barp"] == {**barp, "cost": 0.5}  # priced like a JSON answer


def test_a_reasoning_models_thinking_comes_first_as_a_reasoning_item_streamed_or_not():
    events, _ = translated(events_of, _req(stream=True), chat_chunks({"role": "assistant", "reasoning_content": "Two and"}, {"reasoning": " two."},
                                                   {"content": "4"}))
    assert [e["type"] for e in events][2:9] == [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done", "response.output_item.done"]
    final = _read_with_the_sdk(events)
    assert final.output[0].type == "reasoning" and final.output[0].content[0].text == "Two and two." and final.output_text == "4"
    resp = response_of(_req(), {"choices": [{"finish_reason": "stop", "message": {"content": "4", "reasoning_content": "2+2"}}]})
    assert [o["type"] for o in resp["output"]] == ["reasoning", "message"] and resp["output"][1]["id"].endswith("_1")
    from openai.types.responses import Response

    assert Response.model_validate(resp).output[0].content[0].text == "2+2"


def test_a_stream_cut_at_the_token_cap_is_incomplete_and_a_failure_midway_is_failed():
    events, _ = translated(events_of, _req(stream=True), chat_chunks({"content": "Par"}, finish="length"))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    _read_with_the_sdk(events)  # the SDK's reader raises on events out of order or ids changed
    events, closed = translated(events_of, _req(stream=True), chat_chunks({"content": "Par"}, error={
        "message": "upstream 'chat-8b' failed mid-stream: ClientPayloadError", "type": "upstream_error", "code": 502}))
    assert closed and events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["message"].startswith("upstream 'chat-8b' failed mid-stream")
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Par"  # what had arrived stays


def test_a_client_that_leaves_closes_the_chat_stream():
    closed = []

    async def chat():
        try:
            yield b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n'
            await asyncio.sleep(30)
            yield b"data: [DONE]\n"
        finally:
            closed.append(True)

    async def run():
        stream = events_of(_req(stream=True), chat(), None, lambda m, u: None)
        async for event in stream:
            if b"output_text.delta" in event:
                break
        await stream.aclose()  # what Starlette does when the client goes
        return list(closed)  # now, not when the event loop's shutdown finalizes what is left

    assert asyncio.run(run()) == [True]


def test_a_malformed_answer_is_answered_as_far_as_it_goes():
    for answer in ({"choices": "x"}, {"choices": [None]}, {"choices": [{"message": {"tool_calls": [None, {"function": 3}]}}]},
                   {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 2, "completion_tokens": True,
                                                                          "prompt_tokens_details": [1]}}):
        resp = response_of(_req(), answer)
        assert resp["object"] == "response" and resp["usage"] is None, resp
    lines = [b'data: {"choices": [{"delta": "x"}, {"index": 0, "delta": {"tool_calls": [7, {"index": [1], "function": 5}]}}]}\n',
             b'data: {"choices": "no", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "prompt_tokens_details": 4}}\n',
             b"data: [1, 2]\n", b"data: {not json\n", *chat_chunks({"content": "ok"})]
    events, closed = translated(events_of, _req(stream=True), lines)
    assert closed and events[-1]["type"] == "response.completed" and events[-1]["response"]["usage"]["input_tokens"] == 1


def test_an_answers_output_sent_back_whole_continues_the_conversation():
    """How agent loops (the Agents SDK among them) go on: the last Response's output items, as the SDK
    serialises them (ids, statuses, annotations, a reasoning item), then the call's output."""
    from openai.types.responses import Response

    first = Response.model_validate(response_of(_req(), {"model": "m", "choices": [{"finish_reason": "tool_calls", "message": {
        "content": "Checking.", "reasoning_content": "use the tool",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}}]}))
    items = [o.model_dump(exclude_none=True) for o in first.output]
    assert [i["type"] for i in items] == ["reasoning", "message", "function_call"]
    follow_up = _req(input=[{"role": "user", "content": "Weather?"}, *items,
                            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
    assert chat_request(follow_up).model_dump(exclude_unset=True)["messages"] == [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]


def test_two_alike_tool_calls_without_ids_are_two_items():
    """Two calls of one tool with the same arguments and no ids (a provider may send them so) are two
    items at their own places, with ids of their own: the SDK's reader refuses a place given twice."""
    call = {"type": "function", "function": {"name": "weather", "arguments": "{}"}}
    events, _ = translated(events_of, _req(stream=True, tools=[TOOL]), chat_chunks(
        {"tool_calls": [{"index": 0, **call}]}, {"tool_calls": [{"index": 1, **call}]}, finish="tool_calls"))
    final = _read_with_the_sdk(events)
    assert [(o.type, o.name) for o in final.output] == [("function_call", "weather")] * 2
    assert final.output[0].call_id != final.output[1].call_id
