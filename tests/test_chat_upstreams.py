"""barp-auto chat against providers: failover to another model when one fails, a breaker per
model, and answers priced from the provider's token usage so feedback may give the score alone.

Over real HTTP on 127.0.0.1: the service (colocated, one replica) forwards to a local
OpenAI-compatible server whose models can be made to fail (`tests/openai_upstream.py`). The unit tests of `UpstreamHealth` drive its clock by
hand so cooldowns need no sleeping.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import pytest

from http_client import TOKEN, Client, free_port
from conftest import stop_serve  # noqa: E402
from serve.settings import SettingsError, settings_from_args
from serve.upstream_health import UpstreamHealth

CHECKPOINT_SETS = ("training.iterations=2", "training.rounds_per_iteration=256")
ADMIN_TOKEN = "admin-token-" + "fedcba9876543210"
CLIENTS = {"search": {"token": "search-app-" + "0123456789abcdef", "preference": 0.95, "candidates": ["general-70b", "frontier-400b"]},
           "support": {"token": "support-app-" + "0123456789abcdef", "preference": [0.2, 0.8]}}


# frontier-400b's provider names it otherwise, wants a query on every URL (Azure's api-version) and a fixed header
PROVIDER_NAMED = {"model": "acme/frontier-400b", "headers": {"X-Title": "barp-tests"},
                  "body": {"top_k": 40, "temperature": 0.2}, "timeout_s": 1.0}  # fields of its own; a shorter wait
WINDOWS = {"tiny-1b": 4096, "chat-8b": 8192, "general-70b": 131072}  # the other models' windows are not known
# what each model takes beyond text (live); code-15b, math-15b and frontier-400b are not known
CAPABILITIES = {"general-70b": ["vision", "tools", "json_mode", "json_schema"], "chat-8b": ["tools", "json_mode"], "tiny-1b": []}
ALIASES = {"small": "tiny-1b", "claude-*": "barp-auto"}  # names clients send for ours; every claude-... version
CAPPED = "math-15b"  # one request in flight to its provider at a time (upstreams.<m>.max_concurrent)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_breaker_opens_after_failures_in_a_row_and_closes_on_an_answer():
    clock, changes = Clock(), []
    h = UpstreamHealth(failures_to_open=2, cooldown_s=10, clock=clock, on_change=lambda m, out: changes.append((m, out)))
    h.failed("a", "x")
    h.answered("a")  # an answer in between: the count starts again
    h.failed("a", "x")
    assert h.offered(["a", "b"]) == ["a", "b"] and h.state("a") == "closed"
    h.failed("a", "HTTP 500")
    assert h.state("a") == "open" and h.offered(["a", "b"]) == ["b"] and changes == [("a", True)]
    assert h.offered(["a"]) == ["a"]  # advice only: a request whose every candidate is out still goes somewhere
    snap = h.snapshot()["a"]
    assert snap["failures"] == 3 and snap["failures_in_a_row"] == 2 and snap["last_error"] == "HTTP 500"
    assert snap["reopens_in_s"] == 10
    clock.now = 10
    assert h.state("a") == "half_open" and h.offered(["a", "b"]) == ["a", "b"]
    h.failed("a", "again")  # a failed trial: a new cooldown from now
    assert h.state("a") == "open" and h.snapshot()["a"]["reopens_in_s"] == 10 and changes == [("a", True)]
    clock.now = 20
    h.answered("a")
    assert h.state("a") == "closed" and changes == [("a", True), ("a", False)]


def test_a_rate_limit_that_says_when_holds_the_model_out_until_then_without_charging_its_breaker():
    clock, changes = Clock(), []
    h = UpstreamHealth(failures_to_open=2, cooldown_s=10, clock=clock, on_change=lambda m, out: changes.append((m, out)))
    h.failed("a", "HTTP 500")
    h.rate_limited("a", 5, "HTTP 429, retry after 5 s")
    assert h.state("a") == "rate_limited" and h.offered(["a", "b"]) == ["b"] and h.offered(["a"]) == ["a"]
    snap = h.snapshot()["a"]
    assert snap["failures_in_a_row"] == 1 and snap["failures"] == 2 and snap["reopens_in_s"] == 5 and changes == [("a", True)]
    h.rate_limited("a", 2, "sooner")  # a shorter wait told later does not cut the hold short
    clock.now = 3
    h.answered("a")  # an answer to a request sent before the 429: the hold stays
    assert h.state("a") == "rate_limited" and h.snapshot()["a"]["failures_in_a_row"] == 0 and changes == [("a", True)]
    clock.now = 5
    assert h.state("a") == "closed" and h.offered(["a", "b"]) == ["a", "b"]  # back at once: no half-open trial
    h.answered("a")
    assert changes == [("a", True), ("a", False)] and h.snapshot()["a"]["reopens_in_s"] is None


@pytest.mark.parametrize("headers, wait", [
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),  # Azure OpenAI's finer one first
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "inf"}, None),
    ({"Retry-After": "-4"}, 0.0),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
      "x-ratelimit-remaining-tokens": "120", "x-ratelimit-reset-tokens": "1s"}, 360.0),  # OpenAI: the spent budget's reset
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "later"}, None),
    ({"x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "1s"}, None),
    ({}, None),
])
def test_a_429s_wait_is_read_from_each_providers_headers(headers, wait):
    from multidict import CIMultiDict

    from serve.openai_proxy import _retry_after

    assert _retry_after(CIMultiDict(headers)) == (pytest.approx(wait) if wait is not None else None)


def test_a_429s_wait_may_be_an_http_date():
    from email.utils import formatdate

    from multidict import CIMultiDict

    from serve.openai_proxy import _retry_after

    assert _retry_after(CIMultiDict({"Retry-After": formatdate(time.time() + 30, usegmt=True)})) == pytest.approx(30, abs=1.5)


def test_a_slot_is_given_back_once_whether_released_or_its_stream_dropped():
    import gc

    from serve.upstream_slots import UpstreamSlots

    seen = []
    slots = UpstreamSlots({"a": 2, "b": None}, on_change=lambda m, n: seen.append((m, n)))
    first, second = slots.take("a"), slots.take("a")
    assert first and second and slots.take("a") is None and slots.full("a") and slots.free(["a", "b"]) == ["b"]
    first.release()
    first.release()  # twice: counted once
    assert slots.snapshot()["a"] == {"in_flight": 1, "max_concurrent": 2} and slots.free(["a"]) == ["a"]

    async def stream():
        yield b"data: {}"

    relay = stream()
    second.release_with(relay)
    del relay  # never iterated: its own `finally` would never run
    gc.collect()
    assert slots.snapshot()["a"]["in_flight"] == 0 and seen[-1] == ("a", 0)
    assert all(slots.take("b") for _ in range(50)) and slots.snapshot()["b"] == {"in_flight": 50, "max_concurrent": None}


def test_a_latency_limit_keeps_the_fast_and_the_untimed_and_else_the_fastest_alone():
    from serve.upstream_latency import UpstreamLatency

    lat = UpstreamLatency(window=4, quantile=0.5, min_samples=2)
    for seconds in (0.1, 0.2, 9.0):  # one slow answer among fast ones
        lat.observe("fast", "answer", seconds)
    lat.observe("slow", "answer", 3.0)
    assert lat.within(["fast", "slow"], "answer", 1.0) == (["fast", "slow"], True)  # slow: one answer, not judged yet
    lat.observe("slow", "answer", 5.0)
    assert lat.estimate("fast", "answer") == pytest.approx(0.2) and lat.estimate("slow", "answer") == pytest.approx(4.0)
    assert lat.within(["fast", "slow"], "answer", 1.0) == (["fast"], True)
    assert lat.within(["fast", "slow"], "answer", 0.05) == (["fast"], False)  # none meets it: the fastest, and said
    assert lat.within(["fast", "slow"], "first_token", 0.05) == (["fast", "slow"], True)  # the other wait is untimed
    for seconds in (0.1, 0.1, 0.1, 0.1):
        lat.observe("fast", "answer", seconds)  # the window forgets the slow answer
    assert lat.snapshot()["fast"]["answer"] == {"n": 4, "p50_s": 0.1} and lat.estimate("fast", "answer") == pytest.approx(0.1)


def test_an_alias_is_an_exact_name_first_then_the_first_pattern_that_matches():
    from serve.settings import alias_pattern

    s = settings_from_args({"upstreams": {"a": "http://x/v1", "b": "http://x/v1"},
                            "model_aliases": {"claude-3-5-haiku": "a", "claude-*": "barp-auto", "claude-*-haiku*": "b", "v1.0*": "b"}})
    assert s.alias_target("claude-3-5-haiku") == "a" and s.alias_target("claude-sonnet-4-5-20250929") == "barp-auto"
    assert s.alias_target("claude-haiku-4-5") == "barp-auto"  # the first pattern written wins
    assert s.alias_target("v1.0-x") == "b" and s.alias_target("v1x0") is None and s.alias_target("gpt-4o") is None
    assert alias_pattern("v1.0*(x)") == r"^v1\.0.*\(x\)$"


@pytest.mark.parametrize("raw, error", [
    ({"attempts": 0}, "failover.attempts: must be an integer >= 1"),
    ({"failures_to_open": 1.5}, "failover.failures_to_open: must be an integer >= 1"),
    ({"cooldown_s": 0}, "failover.cooldown_s: must be a number > 0"),
    ({"max_retry_after_s": -1}, "failover.max_retry_after_s: must be a number > 0"),
    ({"retry": 2}, "failover: unknown field(s) ['retry']"),
    ({"judge": {"model": "gpt-judge"}}, "judge.model: needs an entry under upstreams"),
    ({"judge": {"share": 0}}, "judge.share: must be a number in (0, 1]"),
    ({"judge": {"defer_s": -1}}, "judge.defer_s: must be a number of seconds in [0, 3600]"),
    ({"judge": {"max_concurrent": 0}}, "judge.max_concurrent: must be an integer >= 1"),
    ({"latency": {"quantile": 0}}, "latency.quantile: must be a number in (0, 1]"),
    ({"latency": {"window": 5, "min_samples": 6}}, "latency.min_samples: must be at most latency.window"),
    ({"model_aliases": {"gpt-4o": "gpt-5"}, "upstreams": {"a": "http://x/v1"}}, "model_aliases.gpt-4o: must be 'barp-auto' or a model"),
    ({"model_aliases": {"a": "barp-auto"}, "upstreams": {"a": "http://x/v1"}}, "model_aliases: 'a' cannot be an alias"),
    ({"model_aliases": {"barp-auto": "a"}, "upstreams": {"a": "http://x/v1"}}, "model_aliases: 'barp-auto' cannot be an alias"),
    ({"model_aliases": ["gpt-4o"]}, "model_aliases: must be a mapping"),
])
def test_bad_failover_judge_latency_and_alias_settings_are_refused_naming_the_field(raw, error):
    with pytest.raises(SettingsError) as e:
        settings_from_args(raw if {"judge", "latency", "model_aliases"} & set(raw) else {"failover": raw})
    assert str(e.value).startswith(error), e.value


@pytest.mark.parametrize("status, body, overflow", [
    (400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
                     "type": "invalid_request_error", "code": "context_length_exceeded"}}, True),  # OpenAI, vLLM
    (400, {"error": {"message": "Please reduce the length of the messages or completion.", "code": "context_length_exceeded"}}, True),
    (422, {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens "
                    "and 200 `max_new_tokens`", "error_type": "validation"}, True),  # TGI
    (400, {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                     "type": "exceed_context_size_error"}}, True),  # llama.cpp's server
    (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}, True),
    (400, [{"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."}}], False),  # a list: not read
    (400, {"error": {"message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."}}, True),  # Gemini
    (400, {"error": {"message": "Invalid value for 'temperature': must be at most 2.", "code": "invalid_value"}}, False),
    (401, {"error": {"message": "maximum context length is 8192 tokens", "code": "context_length_exceeded"}}, False),
    (400, {"error": None}, False),
])
def test_a_too_long_refusal_is_read_from_each_providers_wording(status, body, overflow):
    from serve.openai_proxy import _context_overflow

    assert bool(_context_overflow(status, body)) is overflow


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from ray import serve

    from conftest import train_small
    from openai_upstream import Upstream
    from serve.app import app_builder

    root = tmp_path_factory.mktemp("failover")
    (root / "token").write_text(TOKEN + "\n")
    (root / "admin-token").write_text(ADMIN_TOKEN + "\n")
    (root / "clients.yaml").write_text(json.dumps(CLIENTS))
    checkpoint = train_small(root, *CHECKPOINT_SETS)
    upstream = Upstream()
    PROVIDER_NAMED["base_url"] = upstream.base_url + "?api-version=2024-10-21"
    upstreams = {m: upstream.base_url for m in ("tiny-1b", "chat-8b", "code-15b", "math-15b", "general-70b", "judge")}
    upstreams["frontier-400b"] = PROVIDER_NAMED
    upstreams[CAPPED] = {"base_url": upstream.base_url, "max_concurrent": 1}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_builder({
        "checkpoint": checkpoint, "log_dir": str(root / "log"),
        "auth": {"token_file": str(root / "token"), "admin_token_file": str(root / "admin-token"),
                 "clients_file": str(root / "clients.yaml")},
        "topology": "colocated", "router_autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "trainer": {"state_dir": str(root / "trainer"), "enabled": False},
        "upstreams": upstreams, "upstream_retries": 0, "upstream_timeout_s": 5, "upstream_stream_usage": True,
        "failover": {"attempts": 2, "failures_to_open": 2, "cooldown_s": 2},
        "latency": {"window": 10, "min_samples": 3},
        "judge": {"model": "judge", "defer_s": 0.5},  # its reply is no grade unless a test sets one: then nothing is posted
        "context_windows": WINDOWS,  # live (user_config), as prices are
        "capabilities": CAPABILITIES,
        "model_aliases": ALIASES,
    }), name="barp", route_prefix="/")
    client = Client(port)
    client.meta = json.loads((Path(checkpoint) / "barp_meta.json").read_text())  # the served prices and tau
    client.log_dir = root / "log"
    client.checkpoint = checkpoint
    yield client, upstream
    stop_serve()
    upstream.close()


def _post_chat(client, body: dict) -> tuple[int, dict, str]:
    """(status, lower-cased headers, the body read to its end as text: a stream's server-sent events)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    text, headers = resp.read().decode(), {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    return resp.status, headers, text


def _chat(client, candidates, **extra):
    body = {"model": "barp-auto", "messages": [{"role": "user", "content": "Sum the first ten primes."}],
            "barp": {"candidates": candidates, "mode": "greedy", "preference": 0.7}, **extra}
    return client.post("/v1/chat/completions", body)


def _first_and_other(client, pair) -> tuple[str, str]:
    """The model greedy routing picks for _chat's prompt of the two (the same policy answers both), and the other."""
    st, r = client.post("/v1/route", {"prompt": "Sum the first ten primes.", "candidates": pair, "mode": "greedy",
                                      "preference": 0.7})
    assert st == 200, r
    return r["model"], next(m for m in pair if m != r["model"])


@contextlib.contextmanager
def _first_choice_failing(client, upstream, pair, status: int):
    """(the greedy pick of the two, the other), the pick's provider answering `status` in the block."""
    first, other = _first_and_other(client, pair)
    upstream.failing[first] = status
    try:
        yield first, other
    finally:
        upstream.failing.pop(first, None)


def _log(client) -> dict:
    st, stats = client.get("/v1/stats")
    assert st == 200, stats
    return stats


def test_a_failing_provider_fails_over_and_its_route_is_withdrawn(service):
    client, upstream = service
    pair = ["tiny-1b", "chat-8b"]
    with _first_choice_failing(client, upstream, pair, 500) as (first, other):
        before = _log(client)["log"]
        calls = upstream.calls.copy()
        st, r = _chat(client, pair)
        assert st == 200, r
        assert r["barp"]["model"] == other and r["choices"][0]["message"]["content"] == f"answer from {other}"
        (failed,) = r["barp"]["failed_over"]
        assert failed["model"] == first and failed["status"] == 502 and "HTTP 500" in failed["error"]
        assert upstream.calls[first] == calls[first] + 1 and upstream.calls[other] == calls[other] + 1
        st, f = client.post("/v1/feedback", {"request_id": r["barp"]["request_id"], "score": 1.0, "cost": 0.001})
        assert st == 200, f
        after = _log(client)["log"]
        # two routes were recorded: the failed one withdrawn, the answered one rewarded; nothing left pending
        assert after["withdrawn"] == before["withdrawn"] + 1 and after["pending"] == before["pending"]
        assert after["rewards"] == before["rewards"] + 1

        # a second failure in a row opens its breaker: the next request is not sent to it at all
        assert _chat(client, pair)[0] == 200
        assert _log(client)["upstreams"][first]["state"] == "open"
        calls = upstream.calls.copy()
        st, r = _chat(client, pair)
        assert st == 200 and r["barp"]["model"] == other and "failed_over" not in r["barp"], r
        assert upstream.calls[first] == calls[first]
        # the provider recovers; after the cooldown the model is offered again, and its answer closes the breaker
        del upstream.failing[first]
        time.sleep(2.2)
        assert _log(client)["upstreams"][first]["state"] == "half_open"
        st, r = _chat(client, pair)
        assert st == 200 and r["barp"]["model"] == first, r
        assert _log(client)["upstreams"][first]["state"] == "closed"


def test_a_rate_limit_or_a_hang_up_fails_over_streaming_too(service):

    client, upstream = service
    pair = ["code-15b", "math-15b"]
    with _first_choice_failing(client, upstream, pair, 429) as (first, other):
        st, r = _chat(client, pair)
        assert st == 200 and r["barp"]["model"] == other and r["barp"]["failed_over"][0]["status"] == 429, r
        # the provider hangs up, on a stream: the failover happens before the status line, so the
        # client gets one clean stream, the other model's
        upstream.failing[first] = 0
        status, headers, body = _post_chat(client, {
            "model": "barp-auto", "stream": True, "messages": [{"role": "user", "content": "Sum the first ten primes."}],
            "barp": {"candidates": pair, "mode": "greedy", "preference": 0.7}})
    assert status == 200, body
    chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    info = chunks[0]["barp"]
    assert headers["x-barp-request-id"] == info["request_id"] and info["model"] == other == headers["x-barp-model"]
    assert info["failed_over"][0]["model"] == first and info["failed_over"][0]["status"] == 502
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == f"answer from {other}"
    assert body.rstrip().endswith("data: [DONE]")


def test_when_every_attempt_fails_the_client_is_told_each_and_a_named_model_never_fails_over(service):
    client, upstream = service
    pair = ["tiny-1b", "general-70b"]
    for m in pair:
        upstream.failing[m] = 503
    try:
        before = _log(client)["log"]
        st, r = _chat(client, pair)
        assert st == 502 and "models tried in turn" in r["error"]["message"] and r["error"]["type"] == "server_error", r
        assert all(f"{m} (502)" in r["error"]["message"] for m in pair), r
        assert _log(client)["log"]["withdrawn"] == before["withdrawn"] + 2
        calls = upstream.calls.copy()
        st, r = client.post("/v1/chat/completions", {"model": "tiny-1b", "messages": [{"role": "user", "content": "hi"}]})
        assert st == 502 and "HTTP 503" in r["error"]["message"], r
        assert {m: c - calls[m] for m, c in upstream.calls.items() if c != calls[m]} == {"tiny-1b": 1}
    finally:
        for m in pair:
            upstream.failing.pop(m, None)


def test_a_chat_answer_is_priced_from_its_usage_so_feedback_may_give_the_score_alone(service):

    from envs.reward import reward

    client, upstream = service
    meta = client.meta
    price = meta["prices"]
    st, r = _chat(client, ["chat-8b", "code-15b"])
    assert st == 200, r
    model, usage = r["barp"]["model"], r["usage"]
    expected = (usage["prompt_tokens"] * price[model]["input_per_mtok"] + usage["completion_tokens"] * price[model]["output_per_mtok"]) / 1e6
    assert r["barp"]["cost"] == pytest.approx(expected, rel=1e-12)
    st, f = client.post("/v1/feedback", {"request_id": r["barp"]["request_id"], "score": 0.75})
    assert st == 200, f
    w = r["barp"]["preference"]
    assert f["reward"] == pytest.approx(reward(0.75, expected, w[0], w[1], meta["tau"]))

    def stream(include_usage: bool) -> tuple[str, list[dict]]:
        body = {"model": "barp-auto", "stream": True, "messages": [{"role": "user", "content": "Sum the first ten primes."}],
                "barp": {"candidates": ["chat-8b", "code-15b"], "preference": 0.7}}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        status, headers, text = _post_chat(client, body)
        assert status == 200 and text.rstrip().endswith("data: [DONE]"), text
        return headers["x-barp-request-id"], [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]

    # streamed with usage: priced as the usage chunk passes, so feedback right after [DONE] finds it
    rid, chunks = stream(True)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3  # the client asked: it sees it
    st, f = client.post("/v1/feedback", {"request_id": rid, "score": 1.0})
    assert st == 200, f
    # not asked for by the client: the service asks the provider (upstream_stream_usage) and hides it
    rid, chunks = stream(False)
    assert all("usage" not in c for c in chunks) and all(c["choices"] for c in chunks), chunks
    assert [b for b in upstream.bodies if b.get("stream")][-1]["stream_options"] == {"include_usage": True}
    st, f = client.post("/v1/feedback", {"request_id": rid, "score": 1.0})
    assert st == 200, f
    # a /v1/route decision (the client called the provider itself): the cost is needed
    rid = client.post("/v1/route", {"prompt": "hello", "preference": 0.5})[1]["request_id"]
    st, f = client.post("/v1/feedback", {"request_id": rid, "score": 1.0})
    assert st == 409 and f["error"].startswith("cost: required"), f
    st, f = client.post("/v1/feedback", {"request_id": rid, "score": 1.0, "cost": 0.002})  # nothing was written
    assert st == 200, f


def _reward_of(log_dir, request_id: str, wait_s: float = 15.0) -> dict | None:
    from serve.feedback_store import RewardReader

    reader = RewardReader(log_dir)
    deadline = time.time() + wait_s
    try:
        while time.time() < deadline:
            found = [r for r in reader.after(0, 1_000_000) if r["request_id"] == request_id]
            if found:
                return found[0]
            time.sleep(0.1)
        return None
    finally:
        reader.close()


def test_the_judge_grades_priced_answers_as_their_feedback(service):

    client, upstream = service
    upstream.server.judge_reply = "8"
    try:
        st, r = _chat(client, ["chat-8b", "math-15b"])
        assert st == 200 and r["barp"]["judged"] is True, r
        rec = _reward_of(client.log_dir, r["barp"]["request_id"])
        assert rec is not None and rec["score"] == 0.8 and rec["cost"] == pytest.approx(r["barp"]["cost"]), rec
        graded = [b for b in upstream.bodies if b["model"] == "judge"][-1]
        assert "Sum the first ten primes." in graded["messages"][-1]["content"]
        assert f"answer from {r['barp']['model']}" in graded["messages"][-1]["content"]
        assert "Conversation before" not in graded["messages"][-1]["content"]  # a first turn has none
        # a follow-up is graded in its conversation
        st, r = client.post("/v1/chat/completions", {"model": "barp-auto", "barp": {"preference": 0.7}, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Pick a prime below 10."},
            {"role": "assistant", "content": "7"}, {"role": "user", "content": "Now square it."}]})
        assert st == 200 and _reward_of(client.log_dir, r["barp"]["request_id"])["score"] == 0.8, r
        graded = [b for b in upstream.bodies if b["model"] == "judge"][-1]["messages"][-1]["content"]
        assert graded.startswith("Conversation before the request:\nsystem: Be brief.\nuser: Pick a prime below 10.\n"
                                 "assistant: 7\n\nRequest:\nNow square it.\n\nAnswer:\n"), graded
        # the first feedback wins: the client's own, after the judge's, is a duplicate
        st, f = client.post("/v1/feedback", {"request_id": r["barp"]["request_id"], "score": 0.1})
        assert st == 409 and "already recorded" in f["error"], f
        # a stream that reports usage is graded on the text its chunks carried
        _, headers, _ = _post_chat(client, {
            "model": "barp-auto", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Sum the first ten primes."}], "barp": {"preference": 0.7}})
        rec = _reward_of(client.log_dir, headers["x-barp-request-id"])
        assert rec is not None and rec["score"] == 0.8, rec
        assert [b for b in upstream.bodies if b["model"] == "judge"][-1]["messages"][-1]["content"].endswith(
            f"answer from {rec['model']}")
        # a client's score within judge.defer_s is kept, and the judge is never called for that answer
        graders = upstream.calls["judge"]
        st, r = _chat(client, ["chat-8b", "math-15b"])
        st, f = client.post("/v1/feedback", {"request_id": r["barp"]["request_id"], "score": 0.3})
        assert st == 200 and r["barp"]["judged"] is True, f
        time.sleep(1.5)
        assert upstream.calls["judge"] == graders and _reward_of(client.log_dir, r["barp"]["request_id"])["score"] == 0.3
        # a reply with no grade posts nothing: the client's feedback is then the one taken
        upstream.server.judge_reply = "It depends."
        graders = upstream.calls["judge"]
        st, r = _chat(client, ["chat-8b", "math-15b"])
        deadline = time.time() + 15
        while upstream.calls["judge"] == graders and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        st, f = client.post("/v1/feedback", {"request_id": r["barp"]["request_id"], "score": 0.3})
        assert st == 200, f
    finally:
        upstream.server.judge_reply = "I cannot grade this."


def test_a_long_document_goes_whole_to_its_provider_and_is_routed_on_its_start(service):
    """A chat body is forwarded, so it has its own body limit (`limits.max_chat_body_bytes`, 8 MiB),
    far above a route's (64 KiB): a 300 KB document in the last user message is routed on its start
    and reaches the provider whole; the judge sees its start and its end. A route's limits stay."""
    from serve.settings import LimitSettings

    client, upstream = service
    upstream.server.judge_reply = "7"
    document = "".join(f"Clause {i}: the lessee keeps the premises in good repair. " for i in range(5000))
    question = "Which clause covers repairs? Answer with its number."
    text = document + "\n\n" + question
    assert len(text.encode()) > 4 * LimitSettings().max_body_bytes
    try:
        st, r = client.post("/v1/chat/completions", {"model": "barp-auto", "messages": [{"role": "user", "content": text}],
                                                      "barp": {"preference": 0.7, "candidates": ["chat-8b", "math-15b"]}})
        assert st == 200, r
        sent = next(b for b in reversed(upstream.bodies) if b["model"] == r["barp"]["model"])
        assert sent["messages"][-1]["content"] == text
        assert _reward_of(client.log_dir, r["barp"]["request_id"])["score"] == 0.7  # the judge graded it
        graded = next(b["messages"][-1]["content"] for b in reversed(upstream.bodies)  # other answers may be graded meanwhile
                      if b["model"] == "judge" and question in b["messages"][-1]["content"])
        assert "Clause 0:" in graded and "characters left out" in graded
        assert len(graded) < 3 * 8000, len(graded)
    finally:
        upstream.server.judge_reply = "I cannot grade this."
    # the same text as a route's prompt is refused: only the router reads it
    st, r = client.post("/v1/route", {"prompt": text})
    assert st == 413 and r["error"] == f"body: larger than the limit of {LimitSettings().max_body_bytes} bytes", r
    # and a chat body above its own limit is refused, naming it
    huge = {"model": "barp-auto", "messages": [{"role": "user", "content": "x" * LimitSettings().max_chat_body_bytes}]}
    st, r = client.post("/v1/chat/completions", huge)
    assert st == 413 and r["error"]["message"] == f"body: larger than the limit of {LimitSettings().max_chat_body_bytes} bytes", r


def test_a_request_longer_than_a_models_context_window_is_not_sent_there(service):
    """`context_windows` (live): a request whose tokens (every message as billed, plus max_tokens if
    sent; a route's input_tokens and output_tokens) overflow a model's window is not routed there,
    even where cost alone would pick it; when every window is too small, the largest takes it, flagged.
    The decision keeps the narrowed candidates, so training stays unbiased."""
    client, _ = service
    small, large = "chat-8b", "general-70b"
    document = "".join(f"Clause {i}: the lessee keeps the premises in good repair. " for i in range(3000))

    def auto(text, candidates, **extra):
        st, r = client.post("/v1/chat/completions", {"model": "barp-auto", "messages": [{"role": "user", "content": text}],
                                                      "barp": {"candidates": candidates, "mode": "greedy", "preference": [0, 1]}, **extra})
        assert st == 200, r
        return r["barp"], _pending_decision(client.log_dir, r["barp"]["request_id"])["candidates"]

    barp, offered = auto(document + "\nWhich clause covers repairs?", [small, large])
    assert barp["model"] == large and offered == [large] and "context_unmet" not in barp, barp
    barp, offered = auto("Which clause covers repairs?", [small, large])
    assert set(offered) == {small, large} and "context_unmet" not in barp
    barp, offered = auto("Which clause covers repairs?", [small, large], max_tokens=WINDOWS[small])  # the answer's cap counts
    assert barp["model"] == large and offered == [large]
    barp, offered = auto(document, [small, "tiny-1b"])  # too long for both: the larger window, flagged
    assert barp["model"] == small and offered == [small] and barp["context_unmet"] is True, barp
    barp, offered = auto(document, [small, "math-15b"])  # a model with no known window is kept
    assert offered == ["math-15b"] and "context_unmet" not in barp

    def route(**body):
        st, r = client.post("/v1/route", {"prompt": "Which clause covers repairs?", "mode": "greedy", "preference": [0, 1], **body})
        assert st == 200, r
        return r, _pending_decision(client.log_dir, r["request_id"])["candidates"]

    r, offered = route(candidates=[small, large], input_tokens=100_000)
    assert r["model"] == large and offered == [large] and "context_unmet" not in r
    r, offered = route(candidates=[small, large], output_tokens=WINDOWS[small])
    assert offered == [large]
    r, offered = route(candidates=[small, large])
    assert set(offered) == {small, large}
    r, offered = route(candidates=[small, "tiny-1b"], input_tokens=100_000)
    assert r["model"] == small and r["context_unmet"] is True, r
    from barp_ray.client import RouterClient

    d = RouterClient(f"http://127.0.0.1:{client.port}", TOKEN).route(
        "Which clause covers repairs?", [0, 1], "greedy", [small, "tiny-1b"], input_tokens=100_000)
    assert d.model == small and d.context_unmet and not d.cost_unmet
    st, listed = client.get("/v1/models")
    windows = {m["id"]: m.get("context_window") for m in listed["models"]}
    assert windows[small] == WINDOWS[small] and windows["code-15b"] is None, listed


def test_a_request_needing_images_tools_or_a_schema_goes_only_to_models_that_take_them(service):
    """`capabilities` (live): a chat request with an image part, tools or a JSON schema is routed only
    among models known to take them or not known at all, even where cost alone would pick another;
    the decision keeps the narrowed candidates. If every candidate lacks one, a 422 names them. A
    route states its `needs` itself; a named model is the client's choice and is not checked."""
    client, upstream = service
    image = [{"type": "text", "text": "What is in this picture?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    cheap = {"mode": "greedy", "preference": [0, 1]}  # cost only: the cheapest allowed model

    def auto(candidates, content="Sum the first ten primes.", **extra):
        return client.post("/v1/chat/completions", {"model": "barp-auto", "messages": [{"role": "user", "content": content}],
                                                    "barp": {"candidates": candidates, **cheap}, **extra})

    def offered(r):
        return _pending_decision(client.log_dir, r["barp"]["request_id"])["candidates"]

    st, r = auto(["tiny-1b", "chat-8b", "general-70b"], image)
    assert st == 200 and r["barp"]["model"] == "general-70b" and offered(r) == ["general-70b"], r
    st, r = auto(["tiny-1b", "chat-8b", "general-70b"], tools=[{"type": "function", "function": {"name": "add", "parameters": {}}}])
    assert st == 200 and set(offered(r)) == {"chat-8b", "general-70b"}, r
    st, r = auto(["tiny-1b", "chat-8b", "general-70b"], response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert offered(r) == ["general-70b"], r
    st, r = auto(["tiny-1b", "code-15b"], image)  # a model nothing is known of is kept
    assert st == 200 and offered(r) == ["code-15b"], r
    st, r = auto(["tiny-1b", "chat-8b"])  # text only: nothing narrowed
    assert set(offered(r)) == {"tiny-1b", "chat-8b"}, r
    st, r = auto(["tiny-1b", "chat-8b"], image, tools=[{"type": "function", "function": {"name": "add", "parameters": {}}}])
    assert st == 422 and "['tools', 'vision']" in r["error"]["message"] and "tiny-1b" in r["error"]["message"], r
    st, r = client.post("/v1/chat/completions", {"model": "tiny-1b", "messages": [{"role": "user", "content": image}]})
    assert st == 200, r  # named: passed on as asked
    upstream.failing["general-70b"] = 500  # the one model that takes images fails: its failure is the answer, not a 422
    try:
        st, r = auto(["tiny-1b", "general-70b"], image)
    finally:
        upstream.failing.clear()
    assert st == 502 and "general-70b" in r["error"]["message"], r

    st, r = client.post("/v1/route", {"prompt": "Describe the chart.", "needs": ["vision"], "candidates": ["tiny-1b", "general-70b"],
                                      **cheap})
    assert st == 200 and r["model"] == "general-70b" and _pending_decision(client.log_dir, r["request_id"])["candidates"] == ["general-70b"]
    st, r = client.post("/v1/route", {"prompt": "Describe the chart.", "needs": ["pictures"]})
    assert st == 422 and "needs" in r["error"], r
    from barp_ray.client import RouterClient

    d = RouterClient(f"http://127.0.0.1:{client.port}", TOKEN).route("Describe the chart.", [0, 1], "greedy",
                                                                    ["tiny-1b", "chat-8b", "general-70b"], needs=["json_schema"])
    assert d.model == "general-70b"
    st, listed = client.get("/v1/models")
    known = {m["id"]: m.get("capabilities") for m in listed["models"]}
    assert known["chat-8b"] == ["json_mode", "tools"] and known["tiny-1b"] == [] and known["code-15b"] is None, listed
    assert _log(client)["offer"]["capabilities"]["general-70b"] == sorted(CAPABILITIES["general-70b"])


def test_a_provider_refusing_a_request_as_too_long_for_its_model_fails_over_without_its_breaker(service):
    """A 400 that says the request is longer than the model's context window (OpenAI's code
    context_length_exceeded, vLLM's wording) is about this request and this model, not a failure of
    the provider: barp-auto withdraws that route and tries another model, and the breaker is not
    charged. The replica remembers the shortest request each model refused: one at least as long is
    not offered to it again (shorter ones are). When every model tried refuses, the client gets the
    400 naming them."""
    client, upstream = service
    pair = ["code-15b", "math-15b"]  # no window configured: only the provider knows it
    first, other = _first_and_other(client, pair)
    charged = _log(client)["upstreams"].get(first, {}).get("failures", 0)
    upstream.context_chars[first] = 10
    try:
        st, r = _chat(client, pair)
        assert st == 200 and r["barp"]["model"] == other, r
        (failed,) = r["barp"]["failed_over"]
        assert failed["model"] == first and failed["status"] == 400 and "maximum context length" in failed["error"], failed
        refused = _log(client)["context_refusals"][first]
        assert refused["refusals"] == 1 and refused["refused_at_tokens"] > 0, refused
        calls = upstream.calls[first]
        st, r = _chat(client, pair)  # as long: not offered to the model that refused it
        assert st == 200 and r["barp"]["model"] == other and "failed_over" not in r["barp"] and upstream.calls[first] == calls, r
        assert _pending_decision(client.log_dir, r["barp"]["request_id"])["candidates"] == [other]
        upstream.context_chars[first] = 12
        st, r = _chat(client, pair, messages=[{"role": "user", "content": "Sum primes."}])  # shorter: offered again
        assert st == 200 and set(_pending_decision(client.log_dir, r["barp"]["request_id"])["candidates"]) == set(pair), r
        upstream.context_chars[first] = 10
        for _ in range(3):  # more than failures_to_open: a breaker charged for these would open
            st, r = _chat(client, [first])  # its only candidate: tried although it refused as long a request before
            assert st == 400 and r["error"]["code"] == "context_length_exceeded", r
        assert _log(client)["upstreams"].get(first, {}).get("failures", 0) == charged, _log(client)["upstreams"]
        assert _log(client)["context_refusals"][first]["refusals"] == 4
        upstream.context_chars[other] = 10
        st, r = _chat(client, pair)
        assert st == 400 and r["error"]["code"] == "context_length_exceeded", r  # OpenAI's shape and code, as the provider's
        assert "longer than its context window" in r["error"]["message"] and f"{other} (400), {first} (400)" in r["error"]["message"]
        # a named model is the client's choice: the provider's own 400 passes through
        st, r = client.post("/v1/chat/completions", {"model": first, "messages": [{"role": "user", "content": "Sum the first ten primes."}]})
        assert st == 400 and r["error"]["code"] == "context_length_exceeded", r
    finally:
        upstream.context_chars.clear()


def test_a_repeated_prompt_is_routed_from_the_kept_encoding_as_from_a_fresh_one(service):
    """embedding_cache: the router replica keeps recent prompts' h(x); a repeat skips the encoder and is
    routed exactly as the first time (the same distribution), and /v1/stats counts the hit."""
    client, _ = service
    prompt = f"Which of these is prime: 91, 97, 99? ({time.time()})"  # never seen before in this replica

    def route():
        st, r = client.post("/v1/route", {"prompt": prompt, "mode": "greedy", "preference": 0.6})
        assert st == 200, r
        return r["probabilities"], r["policy_version"]

    before = _log(client)["embedding_cache"]
    first, second = route(), route()
    after = _log(client)["embedding_cache"]
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"] + 1, (before, after)
    assert first[1] != second[1] or first[0] == second[0]  # same weights: the same decision
    assert after["capacity"] == 4096 and 0 < after["entries"] <= 4096


def _raw_chat(client, body: dict) -> tuple[int, dict, dict]:
    """(status, lower-cased headers, JSON body): the Client helper does not return headers."""
    status, headers, text = _post_chat(client, body)
    return status, headers, json.loads(text)


def _until(check, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_rate_limited_provider_that_says_when_is_left_out_until_then_without_its_breaker(service):
    """A 429 with Retry-After (here Azure's retry-after-ms) fails over as any 429 does, and then the
    model is left out of barp-auto until the time the provider gave, with no failure toward its
    breaker; a request that names it, or has no other candidate, gets the 429 with Retry-After."""
    client, upstream = service
    pair = ["tiny-1b", "chat-8b"]
    with _first_choice_failing(client, upstream, pair, 429) as (first, other):
        upstream.failing_headers[first] = {"retry-after-ms": "2500"}
        st, r = _chat(client, pair)
        assert st == 200 and r["barp"]["model"] == other, r
        (failed,) = r["barp"]["failed_over"]
        assert failed["status"] == 429 and "retry after 2.5 s" in failed["error"], failed
        held = _log(client)["upstreams"][first]
        assert held["state"] == "rate_limited" and held["failures_in_a_row"] == 0 and 0 < held["reopens_in_s"] <= 2.5, held
        calls = upstream.calls[first]
        st, r = _chat(client, pair)
        assert st == 200 and r["barp"]["model"] == other and "failed_over" not in r["barp"] and upstream.calls[first] == calls, r
        ask = {"messages": [{"role": "user", "content": "Sum the first ten primes."}]}
        st, headers, r = _raw_chat(client, {"model": first, **ask})  # named: the client's choice, told when to come back
        assert st == 429 and headers["retry-after"] == "3" and "HTTP 429" in r["error"]["message"], (st, headers, r)
        st, headers, r = _raw_chat(client, {"model": "barp-auto", "barp": {"candidates": [first]}, **ask})
        assert st == 429 and headers["retry-after"] == "3" and r["error"]["type"] == "rate_limit_error", (st, headers, r)
        upstream.failing_headers.clear()
    assert _until(lambda: _log(client)["upstreams"][first]["state"] != "rate_limited", 5)
    st, r = _chat(client, pair)  # its quota is back: offered at once, no half-open trial needed
    assert st == 200 and r["barp"]["model"] == first and "failed_over" not in r["barp"], r
    assert _log(client)["upstreams"][first]["state"] == "closed"


def test_a_model_at_its_concurrency_cap_is_routed_around_and_a_request_naming_it_refused(service):
    """upstreams.<m>.max_concurrent caps the requests in flight to a provider from each ingress
    replica: barp-auto routes around a model at its cap (the decision keeps the candidates it was
    offered), a request naming it, or whose every candidate is full, gets a 429 with Retry-After, and
    every way a request ends gives its place back, a stream the client left before its first chunk
    included."""
    import http.client
    import threading

    client, upstream = service
    other = "code-15b"
    in_flight = lambda: _log(client)["upstream_slots"][CAPPED]["in_flight"]  # noqa: E731
    ask = {"messages": [{"role": "user", "content": "Sum the first ten primes."}]}
    upstream.delays[CAPPED] = 1.5
    try:
        held = []
        holder = threading.Thread(target=lambda: held.append(client.post("/v1/chat/completions", {"model": CAPPED, **ask})))
        holder.start()
        assert _until(lambda: in_flight() == 1)
        calls = upstream.calls[CAPPED]
        st, headers, r = _raw_chat(client, {"model": CAPPED, **ask})
        assert st == 429 and headers["retry-after"] == "1" and r["error"]["code"] == "rate_limit_exceeded", (st, r)
        assert "concurrency cap" in r["error"]["message"] and "1 of 1" in r["error"]["message"], r
        st, headers, r = _raw_chat(client, {"model": CAPPED, "barp": {"fallbacks": [other]}, **ask})  # a named model's fallback
        assert st == 200 and headers["x-barp-model"] == other and headers["x-barp-failed-over"] == f"{CAPPED} (429)", (st, headers)
        st, r = _chat(client, [CAPPED, other])
        assert st == 200 and r["barp"]["model"] == other, r
        assert _pending_decision(client.log_dir, r["barp"]["request_id"])["candidates"] == [other]
        st, r = _chat(client, [CAPPED])
        assert st == 429 and "every candidate model is at its concurrency cap" in r["error"]["message"], r
        assert upstream.calls[CAPPED] == calls  # none of them reached the provider
        holder.join()
        assert held[0][0] == 200 and in_flight() == 0, held

        # a stream the client leaves while the provider has not started answering
        conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": "barp-auto", "stream": True,
                                                                  "barp": {"candidates": [CAPPED]}, **ask}),
                     {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
        assert _until(lambda: in_flight() == 1)
        conn.close()
        assert _until(lambda: in_flight() == 0), _log(client)["upstream_slots"]
        # a stream read to its end, and a JSON answer
        st, r = _chat(client, [CAPPED], stream=True)
        assert st == 200 and r["error"].rstrip().endswith("data: [DONE]") and in_flight() == 0, r  # SSE: not JSON
        st, r = _chat(client, [CAPPED])
        assert st == 200 and r["barp"]["model"] == CAPPED and in_flight() == 0, r
    finally:
        upstream.delays.pop(CAPPED, None)
    assert _log(client)["upstream_slots"][CAPPED] == {"in_flight": 0, "max_concurrent": 1}


def test_a_named_model_falls_back_in_turn_to_the_models_the_request_lists(service):
    """`barp.fallbacks` on a named model: when its provider fails (or it is at its cap) the next is tried,
    streamed or not; `x-barp-model` names the one that answered and `x-barp-failed-over` the ones before.
    Nothing is routed. Every one failing is the last failure with all named. With barp-auto they come
    after its own attempts."""
    client, upstream = service
    ask = {"messages": [{"role": "user", "content": "Name a prime."}]}
    named, backup = "tiny-1b", "general-70b"
    upstream.failing[named] = 500
    try:
        st, headers, r = _raw_chat(client, {"model": named, "barp": {"fallbacks": [backup]}, **ask})
        assert st == 200 and headers["x-barp-model"] == backup and headers["x-barp-failed-over"] == f"{named} (502)", (st, headers)
        assert r["choices"][0]["message"]["content"] == f"answer from {backup}" and r.get("barp") is None, r
        st, headers, body = _post_chat(client, {"model": named, "stream": True, "barp": {"fallbacks": [backup]}, **ask})
        assert st == 200 and headers["x-barp-model"] == backup and f" {backup}" in body and body.rstrip().endswith("[DONE]")
        # barp-auto: its own attempts first (routed, withdrawn when they fail), then the fallbacks, not routed
        st, headers, r = _raw_chat(client, {"model": "barp-auto", "barp": {"candidates": [named], "fallbacks": [backup]}, **ask})
        assert st == 200 and headers["x-barp-model"] == backup and headers["x-barp-failed-over"] == "barp-auto (502)", (st, headers, r)
        assert r.get("barp") is None, r
        upstream.failing[backup] = 503
        st, headers, r = _raw_chat(client, {"model": named, "barp": {"fallbacks": [backup]}, **ask})
        assert st == 502 and f"models tried in turn: {named} (502), {backup} (502)" in r["error"]["message"], r
    finally:
        upstream.failing.clear()
    for m in (named, backup):  # an answer closes the breakers these failures opened, for the tests after
        assert client.post("/v1/chat/completions", {"model": m, **ask})[0] == 200
    st, r = client.post("/v1/chat/completions", {"model": named, "barp": {"fallbacks": ["nowhere-1b"]}, **ask})
    assert st == 422 and r["error"]["message"].startswith("barp.fallbacks: no upstream for ['nowhere-1b']"), r


def test_an_upstream_may_name_the_model_its_own_way_and_want_a_query_headers_fields_and_its_own_timeout(service):
    """`upstreams.<name>.model` is the provider's id for the model routed as <name>; a base_url's
    query (Azure's api-version) stays after the /chat/completions path; `headers` go with every call,
    `body` fields with every request that does not set them; `timeout_s` is this provider's wait."""
    client, upstream = service
    for body in ({"model": "barp-auto", "barp": {"candidates": ["frontier-400b"]}}, {"model": "frontier-400b"}):
        seen, seen_bodies = len(upstream.server.requests), len(upstream.bodies)
        st, r = client.post("/v1/chat/completions", {**body, "messages": [{"role": "user", "content": "Name a prime."}]})
        assert st == 200 and r["model"] == PROVIDER_NAMED["model"], r
        # the judge may grade an earlier answer meanwhile: read this call's request among the newer ones
        (path, headers), = [(p, h) for p, h in upstream.server.requests[seen:] if "x-title" in h]
        assert path == "/v1/chat/completions?api-version=2024-10-21" and headers["x-title"] == "barp-tests", (path, headers)
        (sent,) = [b for b in upstream.bodies[seen_bodies:] if b["model"] != "judge"]
        assert sent["model"] == PROVIDER_NAMED["model"] and sent["top_k"] == 40 and sent["temperature"] == 0.2, sent
    assert r.get("barp") is None and st == 200  # a named model: no routing
    seen_bodies = len(upstream.bodies)
    st, r = client.post("/v1/chat/completions", {"model": "frontier-400b", "temperature": 0.9,
                                                  "messages": [{"role": "user", "content": "Name a prime."}]})
    assert st == 200 and upstream.bodies[seen_bodies]["temperature"] == 0.9  # the request's own field wins
    upstream.delays["frontier-400b"] = 1.5  # longer than its own timeout_s, far within the service's 5 s
    try:
        st, r = client.post("/v1/chat/completions", {"model": "frontier-400b", "messages": [{"role": "user", "content": "Name a prime."}]})
    finally:
        upstream.delays.clear()
    assert st == 504 and "within 1 s" in r["error"]["message"], r
    st, r = client.post("/v1/chat/completions", {"model": "barp-auto", "barp": {"candidates": ["frontier-400b"]},
                                                  "messages": [{"role": "user", "content": "Name a prime."}]})
    assert r["barp"]["model"] == "frontier-400b"  # the name routed (and rewarded), not the provider's id


@pytest.mark.parametrize("entry, error", [
    ({"base_url": "http://h", "model": ""}, "upstreams.m.model"),
    ({"base_url": "http://h", "headers": {"Authorization": "Bearer x"}}, "upstreams.m.headers.Authorization: the key's header"),
    ({"base_url": "http://h", "api_key_header": "api-key", "headers": {"API-Key": "x"}}, "upstreams.m.headers.API-Key"),
    ({"base_url": "http://h", "headers": {"X-Title": "a\r\nb"}}, "upstreams.m.headers: 'X-Title'"),
    ({"base_url": "http://h", "headers": ["X-Title"]}, "upstreams.m.headers: must map"),
    ({"base_url": "http://h", "max_concurrent": 0}, "upstreams.m.max_concurrent: must be an integer >= 1"),
    ({"base_url": "http://h", "timeout_s": 0}, "upstreams.m.timeout_s: must be a number > 0"),
    ({"base_url": "http://h", "body": {"model": "x"}}, "upstreams.m.body.model: set by the service or the client"),
    ({"base_url": "http://h", "body": ["top_k"]}, "upstreams.m.body: must map"),
    ({"base_url": "http://h", "body": {"seed": float("nan")}}, "upstreams.m.body: must hold JSON values only"),
    ({"base_url": "http://h", "max_concurrent": True}, "upstreams.m.max_concurrent: must be an integer >= 1"),
])
def test_bad_upstream_naming_and_headers_are_refused_naming_the_field(entry, error):
    with pytest.raises(SettingsError, match=re.escape(error)):
        settings_from_args({"upstreams": {"m": entry}})


def test_a_route_only_client_withdraws_a_route_whose_provider_failed(service):
    """The /v1/route counterpart of chat failover: a client that calls providers itself says a
    routed request got no answer, and the decision is never trained on."""
    client, _ = service
    st, r = client.post("/v1/route", {"prompt": "Sum the first ten primes.", "preference": 0.5})
    assert st == 200, r
    assert Client(client.port, token=None).post("/v1/feedback/withdraw", {"request_id": r["request_id"]})[0] == 401
    before = _log(client)["log"]
    st, w = client.post("/v1/feedback/withdraw", {"request_id": r["request_id"]})
    assert st == 200 and w == {"request_id": r["request_id"], "withdrawn": True}, w
    after = _log(client)["log"]
    assert after["withdrawn"] == before["withdrawn"] + 1 and after["pending"] == before["pending"] - 1
    st, f = client.post("/v1/feedback", {"request_id": r["request_id"], "score": 1.0, "cost": 0.001})
    assert st == 404 and "already withdrawn" in f["error"], f
    st, w = client.post("/v1/feedback/withdraw", {"request_id": r["request_id"]})
    assert st == 404, w


def test_a_latency_limit_routes_around_a_slow_provider_and_says_when_none_is_fast_enough(service):
    """A provider that takes 0.5 s: once this ingress replica has timed three of its answers, a
    request with barp.max_latency_s 0.3 goes to the other model, a JSON request by the whole answer
    and a stream by its first chunk; with a limit no one meets, the fastest answers and the answer
    says so. The decision keeps the narrowed candidates, as the trainer must see them."""
    client, upstream = service
    pair = ["general-70b", "frontier-400b"]
    first, other = _first_and_other(client, pair)
    prompt = [{"role": "user", "content": "Sum the first ten primes."}]

    def post(body):
        status, _, text = _post_chat(client, {"messages": prompt, **body})
        assert status == 200, text
        return json.loads(text) if not body.get("stream") else [json.loads(x[6:]) for x in text.splitlines() if x.startswith("data: {")][0]

    def auto(limit, stream=False):
        return post({"model": "barp-auto", "stream": stream,
                     "barp": {"candidates": pair, "mode": "greedy", "preference": 0.7, "max_latency_s": limit}})["barp"]

    upstream.delays[first] = 0.5
    try:
        assert auto(0.3)["model"] == first  # neither has min_samples timings yet: the limit cannot leave one out
        before = _log(client)["upstream_latency"].get(other, {}).get("first_token", {}).get("n", 0)  # earlier tests' streams
        for model in pair:
            for stream in (False, True):
                for _ in range(3):
                    post({"model": model, "stream": stream})
        waits = _log(client)["upstream_latency"]
        assert waits[first]["answer"]["p90_s"] >= 0.5 and waits[first]["first_token"]["p90_s"] >= 0.5, waits
        assert waits[other]["answer"]["p90_s"] < 0.3 and waits[other]["first_token"]["n"] == min(before + 3, 10), waits  # window 10
        assert auto(None)["model"] == first  # no limit: the policy's pick, slow or not
        json_route, stream_route = auto(0.3), auto(0.3, stream=True)
        assert json_route["model"] == other and "latency_unmet" not in json_route, json_route
        assert stream_route["model"] == other and "latency_unmet" not in stream_route, stream_route
        unmet = auto(0.001)
        assert unmet["model"] == other and unmet["latency_unmet"] is True, unmet
    finally:
        upstream.delays.pop(first, None)
    st, f = client.post("/v1/feedback", {"request_id": json_route["request_id"], "score": 1.0})  # priced by the service
    assert st == 200, f
    assert _reward_of(client.log_dir, json_route["request_id"])["candidates"] == [other]


def test_a_cost_limit_prices_every_message_and_the_answer_cap(service):
    """barp.max_cost prices each model for this request as its provider bills it: every message's
    tokens (a long system prompt included) x input price + max_tokens (else the checkpoint's answer
    length) x output price. A model over the limit is left out; with none under it the cheapest
    answers, flagged. The decision keeps the narrowed candidates."""
    from barp_ray.encoder import count_tokens

    client, _ = service
    pair = ["general-70b", "frontier-400b"]
    prices, encoder = client.meta["prices"], client.meta["encoder"]
    system = "You are a careful assistant for a large accounting firm. " * 30
    question = "Sum the first ten primes."
    n_in = int(count_tokens([system], encoder)[0] + count_tokens([question], encoder)[0])

    def dollars(model, n_out):
        return (n_in * prices[model]["input_per_mtok"] + n_out * prices[model]["output_per_mtok"]) / 1e6

    def auto(limit, **extra):
        st, r = client.post("/v1/chat/completions", {
            "model": "barp-auto", "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "barp": {"candidates": pair, "mode": "greedy", "preference": [1, 0], "max_cost": limit}, **extra})
        assert st == 200, r
        return r["barp"]

    cheaper, dearer = sorted(pair, key=lambda m: dollars(m, 16))
    # Between the two at max_tokens 16: the cheaper alone fits. The system prompt counts: on the question
    # alone the dearer would fit too.
    limit = (dollars(cheaper, 16) + dollars(dearer, 16)) / 2
    question_only = (count_tokens([question], encoder)[0] * prices[dearer]["input_per_mtok"] + 16 * prices[dearer]["output_per_mtok"]) / 1e6
    assert question_only < limit
    r = auto(limit, max_tokens=16)
    assert r["model"] == cheaper and "cost_unmet" not in r, r
    assert _pending_decision(client.log_dir, r["request_id"])["candidates"] == [cheaper]
    # Above both at max_tokens 16, below the dearer at the checkpoint's answer length (no cap sent)
    answer = client.meta["config"]["data"]["output_tokens"]
    between = (max(dollars(dearer, 16), dollars(cheaper, answer)) + dollars(dearer, answer)) / 2
    assert dollars(dearer, 16) < between < dollars(dearer, answer) and dollars(cheaper, answer) < between
    assert set(_pending_decision(client.log_dir, auto(between, max_tokens=16)["request_id"])["candidates"]) == set(pair)  # both fit
    assert _pending_decision(client.log_dir, auto(between)["request_id"])["candidates"] == [cheaper]
    r = auto(dollars(cheaper, 16) / 2, max_completion_tokens=16)
    assert r["model"] == cheaper and r["cost_unmet"] is True, r


def _pending_decision(log_dir, request_id: str) -> dict:
    import sqlite3

    with sqlite3.connect(log_dir / "feedback.sqlite3") as db:
        (body,), = db.execute("SELECT body FROM decisions WHERE request_id = ?", (request_id,)).fetchall()
    return json.loads(body)


def test_an_admin_token_keeps_clients_out_of_the_admin_endpoints(service, tmp_path, monkeypatch):
    """With auth.admin_token_file set, the API token that clients hold posts feedback and reads
    stats but gets a 403 naming the setting on /v1/admin/*; the admin token opens both; any other
    token is a 401. An admin token equal to the API token fails the deploy, naming the field."""
    client, _ = service
    admin = Client(client.port, token=ADMIN_TOKEN)
    for path, body in (("/v1/admin/train", None), ("/v1/admin/load_checkpoint", {"path": str(tmp_path / "none")})):
        st, r = client.post(path, body)
        assert st == 403 and r["error"].startswith("authorization: the API token cannot use /v1/admin/") \
            and "auth.admin_token_file" in r["error"], r
    st, r = client.get("/v1/admin/processes")
    assert st == 403, r
    st, r = admin.post("/v1/admin/load_checkpoint", {"path": str(tmp_path / "none")})
    assert st == 404, r  # past the guard: nothing at the path
    st, r = admin.post("/v1/admin/train")
    assert st == 200 and "updates" in r, r
    assert admin.get("/v1/stats")[0] == 200 and client.get("/v1/stats")[0] == 200
    st, r = Client(client.port, token="not-a-token-" + "0123456789").post("/v1/admin/train")
    assert st == 401 and r["error"] == "authorization: invalid bearer token", r
    from serve.app import app_builder

    monkeypatch.setenv("BARP_TEST_ADMIN", TOKEN)
    with pytest.raises(SettingsError, match="auth.admin_token: must differ from the API token"):
        app_builder({"checkpoint": client.checkpoint,
                     "auth": {"token_file": str(client.log_dir.parent / "token"), "admin_token_env": "BARP_TEST_ADMIN"}})


def test_named_clients_get_their_defaults_stay_in_their_models_and_rate_only_their_own_routes(service):
    """auth.clients_file: each client's token routes with its default preference and within its
    models, is logged under its name, may rate and withdraw only its own routes, and cannot read
    the operator's stats; a wrong token on the open route path is refused, not ignored."""
    client, _ = service
    search, support = (Client(client.port, token=CLIENTS[n]["token"]) for n in ("search", "support"))
    prompt = {"prompt": "Prove that there are infinitely many primes."}
    st, r = search.post("/v1/route", prompt)
    assert st == 200 and r["preference"] == pytest.approx([0.95, 0.05]) and r["model"] in CLIENTS["search"]["candidates"], r
    assert {m for m, p in r["probabilities"].items() if p > 0} <= set(CLIENTS["search"]["candidates"]), r
    st, e = search.post("/v1/route", {**prompt, "candidates": ["tiny-1b", "general-70b"]})
    assert st == 403 and e["error"] == ("candidates: client 'search' may not use ['tiny-1b']; "
                                         "its models: ['general-70b', 'frontier-400b']"), e
    st, mine = support.post("/v1/route", {**prompt, "preference": 0.5})
    assert st == 200 and mine["preference"] == pytest.approx([0.5, 0.5]), mine  # what a request sends wins
    # another client's route is an unknown request to it; its own, or the operator's token, may rate it
    for who, rid in ((support, r["request_id"]), (search, mine["request_id"])):
        st, e = who.post("/v1/feedback", {"request_id": rid, "score": 1.0, "cost": 0.001})
        assert st == 404 and "unknown request" in e["error"], e
        st, e = who.post("/v1/feedback/withdraw", {"request_id": rid})
        assert st == 404, e
    assert search.post("/v1/feedback", {"request_id": r["request_id"], "score": 1.0, "cost": 0.001})[0] == 200
    assert client.post("/v1/feedback", {"request_id": mine["request_id"], "score": 0.5, "cost": 0.001})[0] == 200
    assert _reward_of(client.log_dir, r["request_id"])["client"] == "search"
    assert _reward_of(client.log_dir, mine["request_id"])["client"] == "support"
    # chat: barp-auto within the client's models; naming another is refused
    st, c = search.post("/v1/chat/completions", {"model": "barp-auto", "messages": [{"role": "user", "content": "Hi"}]})
    assert st == 200 and c["barp"]["model"] in CLIENTS["search"]["candidates"] and c["barp"]["preference"] == pytest.approx([0.95, 0.05]), c
    st, e = search.post("/v1/chat/completions", {"model": "tiny-1b", "messages": [{"role": "user", "content": "Hi"}]})
    assert st == 403 and e["error"]["message"].startswith("model: client 'search' may not use ['tiny-1b']"), e
    assert e["error"]["type"] == "permission_error" and e["error"]["param"] == "model", e
    # its models, barp-auto, and the aliases it can use (not `small`: tiny-1b is not among its models)
    assert [m["id"] for m in search.get("/v1/models")[1]["models"]] == [*CLIENTS["search"]["candidates"], "barp-auto",
                                                                         "claude-*"]
    assert len(support.get("/v1/models")[1]["models"]) == len(client.meta["models"]) + 1 + len(ALIASES)  # and barp-auto, and the aliases
    # the operator's paths
    st, e = search.get("/v1/stats")
    assert st == 403 and "client 'search' cannot use this path" in e["error"], e
    assert search.post("/v1/admin/train")[0] == 403
    stats = _log(client)
    assert stats["clients"] == {"search": {"preference": [0.95, pytest.approx(0.05)], "candidates": CLIENTS["search"]["candidates"]},
                                "support": {"preference": [0.2, 0.8], "candidates": None}}, stats["clients"]
    assert CLIENTS["search"]["token"] not in json.dumps(stats)
    st, e = Client(client.port, token="not-a-token-" + "0123456789").post("/v1/route", prompt)
    assert st == 401, e
    assert Client(client.port, token=None).post("/v1/route", prompt)[0] == 200  # no token on the open path: anonymous


def test_an_edited_clients_file_is_taken_without_a_restart_and_a_broken_one_refused(service):
    """A client added to auth.clients_file routes within a few seconds; a file that does not
    validate is refused (shown in /v1/stats, naming the client and field) and the clients stay."""
    client, _ = service
    path = client.log_dir.parent / "clients.yaml"
    original = path.read_text()
    newcomer = Client(client.port, token="newcomer-app-" + "0123456789abcdef")
    try:
        path.write_text(json.dumps({**CLIENTS, "newcomer": {"token": newcomer.token, "candidates": ["chat-8b"]}}))
        deadline = time.time() + 15
        while newcomer.post("/v1/route", {"prompt": "Hello there"})[0] != 200:
            assert time.time() < deadline, "the added client was never taken"
            time.sleep(0.5)
        st, r = newcomer.post("/v1/route", {"prompt": "Hello there"})
        assert st == 200 and r["model"] == "chat-8b", r
        path.write_text(json.dumps({**CLIENTS, "broken": {"token": "short"}}))
        deadline = time.time() + 15
        while not _log(client)["clients_refused"]:
            assert time.time() < deadline, "the broken file was never noticed"
            time.sleep(0.5)
        assert _log(client)["clients_refused"].startswith("auth.clients_file: broken.token: no token")
        assert newcomer.post("/v1/route", {"prompt": "Hello there"})[0] == 200  # the clients before it stay
    finally:
        path.write_text(original)
    deadline = time.time() + 15
    while newcomer.post("/v1/route", {"prompt": "Hello there"})[0] != 401:  # removed again: its token is refused
        assert time.time() < deadline, "the removed client kept its access"
        time.sleep(0.5)
    assert _log(client)["clients_refused"] is None


@pytest.mark.parametrize("entry, error", [
    ({"a": {"token": "short"}}, "auth.clients_file: a.token: no token, or shorter than 16 characters"),
    ({"a": {"token": TOKEN}}, "auth.clients_file: a.token: used by another client or by the API or admin token"),
    ({"a": {"token": "x" * 16}, "b": {"token": "x" * 16}}, "auth.clients_file: b.token: used by another client"),
    ({"a": {"token": "x" * 16, "candidates": ["gpt-9"]}}, "auth.clients_file: a.candidates: unknown model(s) ['gpt-9']"),
    ({"a": {"token": "x" * 16, "preference": 2}}, "auth.clients_file: a.preference: a knob in [0, 1]"),
    ({"a b": {"token": "x" * 16}}, "auth.clients_file: a b: a client name is"),
    ({"a": {"token": "x" * 16, "budget": 1}}, "auth.clients_file: a: must be a mapping with token"),
])
def test_a_bad_clients_file_is_refused_naming_the_client_and_field(tmp_path, monkeypatch, entry, error):
    from serve.guard import GuardError, load_clients

    monkeypatch.setenv("BARP_TEST_TOKEN", TOKEN)
    (tmp_path / "clients.yaml").write_text(json.dumps(entry))
    auth = settings_from_args({"auth": {"token_env": "BARP_TEST_TOKEN", "clients_file": str(tmp_path / "clients.yaml")}}).auth
    with pytest.raises(GuardError) as e:
        load_clients(auth, ["m1", "m2"])
    assert str(e.value).startswith(error), e.value


def test_the_openai_sdks_responses_api_is_answered_by_the_routed_chat_models(service):
    """`POST /v1/responses` through the official SDK: routed by barp-auto like a chat (candidates,
    capabilities, pricing, feedback by request_id), the input sent as chat messages, function tools as
    chat tools, and a stream read by the SDK's own accumulator; a client that leaves mid-stream closes
    the provider's call; what needs a kept response is a 422 in OpenAI's error shape."""
    from openai import OpenAI, UnprocessableEntityError

    from openai_upstream import ARGUMENTS

    client, upstream = service
    oa = OpenAI(base_url=f"http://127.0.0.1:{client.port}/v1", api_key=TOKEN, max_retries=0, timeout=30)
    pair = ["chat-8b", "code-15b"]
    raw = oa.responses.with_raw_response.create(model="barp-auto", instructions="Be brief.", input="Sum the first ten primes.",
                                                max_output_tokens=64, temperature=0.3,
                                                extra_body={"barp": {"candidates": pair, "preference": 0.7}})
    done = raw.parse()
    model = done.barp["model"]
    assert model in pair and done.output_text == f"answer from {model}" and done.status == "completed", done
    assert raw.headers["x-barp-request-id"] == done.barp["request_id"] and done.usage.output_tokens == 3
    sent = upstream.bodies[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sum the first ten primes."}]
    assert sent["max_completion_tokens"] == 64 and sent["temperature"] == 0.3 and "input" not in sent and "barp" not in sent
    price = client.meta["prices"][model]
    assert done.barp["cost"] == pytest.approx((5 * price["input_per_mtok"] + 3 * price["output_per_mtok"]) / 1e6)
    st, f = client.post("/v1/feedback", {"request_id": done.barp["request_id"], "score": 0.9})  # priced: the score alone
    assert st == 200 and f["accepted"], f

    # a function tool, streamed: only models known to take tools are offered (chat-8b, general-70b), and the
    # SDK's stream reader builds the call from the events
    tool = {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with oa.responses.stream(model="barp-auto", input=[{"role": "user", "content": "Weather in Paris?"}], tools=[tool],
                             extra_body={"barp": {"candidates": ["tiny-1b", "chat-8b"], "preference": 0.7}}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    call = final.output[0]
    assert (call.type, call.name, call.arguments) == ("function_call", "weather", ARGUMENTS), final.output
    assert final.barp["model"] == "chat-8b" and final.usage is not None and kinds[0] == "response.created", kinds
    assert upstream.bodies[-1]["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": tool["parameters"]}}]
    st, f = client.post("/v1/feedback", {"request_id": final.barp["request_id"], "score": 1.0})
    assert st == 200, f
    # the call's output sent back: the conversation goes whole, as chat messages, to a named model
    again = oa.responses.create(model="chat-8b", input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": "weather", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert again.output_text == "answer from chat-8b" and getattr(again, "barp", None) is None
    assert upstream.bodies[-1]["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": "weather", "arguments": ARGUMENTS}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}]
    # cut at the cap: incomplete, as OpenAI says it
    short = oa.responses.create(model="tiny-1b", input="Sum the first ten primes.", max_output_tokens=1)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens" and short.output_text == "answer"

    # a client that leaves mid-stream closes the provider's call
    left = len(upstream.server.disconnects)
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    conn.request("POST", "/v1/responses", json.dumps({"model": "tiny-1b", "input": "upstream-slow", "stream": True}),
                 {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    seen = b""
    while resp.status == 200 and b"response.output_text.delta" not in seen and len(seen) < 65536:
        seen += resp.read1(65536)  # the events as they come, up to the first of the answer's text
    assert b"response.output_text.delta" in seen, seen
    conn.close()
    assert _until(lambda: len(upstream.server.disconnects) > left), "the provider's stream was not closed"

    with pytest.raises(UnprocessableEntityError) as refused:
        oa.responses.create(model="barp-auto", input="Hi", previous_response_id="resp_123")
    assert refused.value.body["message"].startswith("previous_response_id: "), refused.value.body
    assert refused.value.type == "invalid_request_error"
    with pytest.raises(UnprocessableEntityError) as refused:
        oa.responses.create(model="barp-auto", input="Hi", tools=[{"type": "web_search"}])
    assert refused.value.body["message"] == ("tools.0: 'web_search' is a hosted tool, which chat models do not run; "
                                             "only function tools can be sent"), refused.value.body


def _post_messages(client, body: dict, path: str = "/v1/messages", key: str | None = TOKEN) -> tuple[int, dict, str]:
    """Anthropic's way: the key in x-api-key, the version header its SDKs send."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json", "anthropic-version": "2023-06-01",
                                                  **({"x-api-key": key} if key else {})})
    resp = conn.getresponse()
    text, headers = resp.read().decode(), {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    return resp.status, headers, text


def test_anthropics_messages_api_is_answered_by_the_routed_chat_models(service):
    """`POST /v1/messages` as Anthropic's clients send it (x-api-key): routed by barp-auto like a chat,
    priced so feedback may give the score alone, client tools offered only to models that take tools,
    tool uses streamed as Anthropic's events, a token count, and errors in Anthropic's shape."""
    from openai_upstream import ARGUMENTS

    client, upstream = service
    pair = ["chat-8b", "code-15b"]
    st, headers, text = _post_messages(client, {"model": "barp-auto", "max_tokens": 64, "system": "Be brief.",
                                                "messages": [{"role": "user", "content": "Sum the first ten primes."}],
                                                "barp": {"candidates": pair, "preference": 0.7}})
    msg = json.loads(text)
    assert st == 200 and msg["type"] == "message" and msg["stop_reason"] == "end_turn", text
    model = msg["barp"]["model"]
    assert model in pair and msg["content"] == [{"type": "text", "text": f"answer from {model}"}]
    assert headers["x-barp-request-id"] == msg["barp"]["request_id"] and msg["usage"]["output_tokens"] == 3
    assert upstream.bodies[-1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert upstream.bodies[-1]["max_completion_tokens"] == 64
    st, f = client.post("/v1/feedback", {"request_id": msg["barp"]["request_id"], "score": 0.9})
    assert st == 200 and f["accepted"], f

    # a client tool, streamed: offered only to the models known to take tools (chat-8b of these two)
    tool = {"name": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    st, headers, text = _post_messages(client, {"model": "barp-auto", "max_tokens": 64, "stream": True, "tools": [tool],
                                                "messages": [{"role": "user", "content": "Weather in Paris?"}],
                                                "barp": {"candidates": ["tiny-1b", "chat-8b"], "preference": 0.7}})
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert st == 200 and kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"], kinds
    start = next(e for e in events if e["type"] == "content_block_start")
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["name"] == "weather"
    assert "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta") == ARGUMENTS
    assert events[0]["message"]["barp"]["model"] == "chat-8b" and events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["barp"]["cost"] > 0  # the stream asked its provider for usage: priced
    # its result sent back, to a named model
    use_id = start["content_block"]["id"]
    st, _, text = _post_messages(client, {"model": "chat-8b", "max_tokens": 64, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use_id, "name": "weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use_id, "content": "sunny"}]}]})
    assert st == 200 and json.loads(text)["content"][0]["text"] == "answer from chat-8b", text
    assert upstream.bodies[-1]["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": use_id, "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": use_id, "content": "sunny"}]

    st, _, text = _post_messages(client, {"model": "barp-auto", "messages": [{"role": "user", "content": "Sum the first ten primes."}],
                                          "system": "Be brief.", "tools": [tool]}, "/v1/messages/count_tokens")
    assert st == 200 and json.loads(text)["input_tokens"] > 10, text
    # errors in Anthropic's shape: a model it cannot reach, a server tool, no key
    st, _, text = _post_messages(client, {"model": "gpt-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
    assert st == 422 and json.loads(text) == {"type": "error", "error": {"type": "invalid_request_error", "message": json.loads(
        text)["error"]["message"]}} and json.loads(text)["error"]["message"].startswith("model: must be 'barp-auto'"), text
    st, _, text = _post_messages(client, {"model": "barp-auto", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}],
                                          "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    assert st == 422 and "is a server tool" in json.loads(text)["error"]["message"], text
    st, _, text = _post_messages(client, {"model": "barp-auto", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
                                 key=None)
    assert st == 401 and json.loads(text)["error"]["type"] == "authentication_error", text


def test_a_name_clients_send_may_alias_barp_auto_or_one_of_the_models(service):
    """`model_aliases`: an app that names a model of its own (small, any claude-...) reaches barp-auto or
    the model it stands for without editing the app; /v1/models lists the aliases, and an unknown name
    is told them."""
    client, upstream = service
    st, _, text = _post_messages(client, {"model": "claude-sonnet-4-5-20250929", "max_tokens": 16, "messages": [
        {"role": "user", "content": "Sum the first ten primes."}], "barp": {"candidates": ["chat-8b", "code-15b"]}})
    routed = json.loads(text)
    assert st == 200 and routed["barp"]["model"] in ("chat-8b", "code-15b"), text  # routed: barp-auto
    before = upstream.calls["tiny-1b"]
    st, r = client.post("/v1/chat/completions", {"model": "small", "messages": [{"role": "user", "content": "Hi"}]})
    assert st == 200 and r["choices"][0]["message"]["content"] == "answer from tiny-1b" and "barp" not in r, r
    assert upstream.calls["tiny-1b"] == before + 1
    st, listed = client.get("/v1/models")
    assert {m["id"]: m.get("alias_of") for m in listed["data"] if "alias_of" in m} == ALIASES, listed
    st, r = client.post("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]})
    assert st == 422 and "or an alias (['small', 'claude-*'])" in r["error"]["message"], r
    model = client.get("/openapi.json")[1]["components"]["schemas"]["MessagesRequest"]["properties"]["model"]
    assert model["anyOf"][1:] == [{"pattern": "^claude-.*$"}] and model["anyOf"][0]["enum"][-1] == "small", model
