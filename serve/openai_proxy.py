"""OpenAI-compatible `POST /v1/chat/completions` with model `barp-auto`: route, then forward.

The last user message is the prompt the router sees (its start, if it is longer than a route's
prompt may be: `limits:`); the request goes unchanged (but for
`model` and `barp`) to the chosen model's upstream, and the answer comes back with a `barp`
field carrying the request_id to post feedback against. When the chosen model's provider fails
before answering, barp-auto routes the request again among the models not yet tried
(`failover:` in the serve config), and `barp.failed_over` lists what failed. With `stream: true` the upstream's
server-sent events pass through as they arrive; the request_id is in the `x-barp-request-id`
header and in the first chunk's `barp` field, so a streaming client can reward the answer too.
"""
from __future__ import annotations

import json
import math
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from barp_ray.data.llmrouter import token_costs
from serve.schemas import MAX_TOKEN_COUNT, ChatCompletionRequest, ChatMessage, RouteRequest
from serve.upstream import UpstreamError
from serve.upstream_slots import Slot

AUTO = "barp-auto"
REQUEST_ID_HEADER = "x-barp-request-id"
MODEL_HEADER = "x-barp-model"  # the model that answered: routed (barp-auto) or a named model's fallback
FAILED_OVER_HEADER = "x-barp-failed-over"  # the models tried before it, when fallbacks answered


class ContextOverflow(UpstreamError):
    """The provider refused the request as longer than its model's context window: another model may
    take it, and the provider is healthy (its breaker is not charged)."""


# OpenAI's code (Azure, Groq, DeepSeek answer it too) and the wordings of vLLM, TGI, llama.cpp's server,
# Gemini's OpenAI endpoint, Mistral and Anthropic-style gateways.
_OVERFLOW = re.compile(r"context[ _-]?(length|window|size)|maximum context|prompt is too long|too many (input )?tokens"
                       r"|max_new_tokens`? must be <=|exceeds the maximum number of tokens", re.I)


def _context_overflow(status: int, data: Any) -> str | None:
    """The provider's message when a 400 / 413 / 422 says the request is too long for the model."""
    if status not in (400, 413, 422) or not isinstance(data, dict):
        return None
    error = data.get("error")
    code, message = (error.get("code"), error.get("message")) if isinstance(error, dict) else (None, error)
    message = message if isinstance(message, str) else (data.get("message") if isinstance(data.get("message"), str) else "")
    if code == "context_length_exceeded" or _OVERFLOW.search(message or ""):
        return message or str(code)
    return None


class AtCapacity(UpstreamError):
    """The model is at its concurrency cap here (upstreams.<m>.max_concurrent): never sent, try again shortly."""

    def __init__(self, model: str, slots):
        super().__init__(429, f"model: {model!r} is at its concurrency cap here ({slots.refusal([model])} requests in flight)", 1.0)


class ChatProxyError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers


def _retry_header(seconds: float | None) -> dict[str, str] | None:
    return None if seconds is None else {"retry-after": str(max(1, math.ceil(seconds)))}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float | None:
    """OpenAI's reset times: "1s", "6m0s", "20ms", "1h2m3.5s"."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def _retry_after(headers) -> float | None:
    """Seconds a 429 says to wait: `retry-after-ms` (Azure OpenAI), `Retry-After` (seconds or an HTTP
    date), or else the reset of whichever of OpenAI's `x-ratelimit-*` budgets is spent ("1s", "6m0s").
    None when it says nothing usable."""
    def seconds(value: str | None, scale: float = 1.0) -> float | None:
        try:
            wait = float(value) * scale if value is not None else None
        except ValueError:
            try:
                wait = parsedate_to_datetime(value).timestamp() - time.time() if scale == 1.0 else None
            except (TypeError, ValueError):
                wait = None
        return max(0.0, wait) if wait is not None and math.isfinite(wait) else None

    for wait in (seconds(headers.get("retry-after-ms"), 0.001), seconds(headers.get("retry-after"))):
        if wait is not None:
            return wait
    waits = [d for budget in ("requests", "tokens") if headers.get(f"x-ratelimit-remaining-{budget}") == "0"
             and (d := _duration(headers.get(f"x-ratelimit-reset-{budget}") or "")) is not None]
    return max(waits) if waits else None


def _text_of(msg: ChatMessage) -> str | None:
    """A message's text: its string content, or the text parts of multi-part content."""
    content = msg.content
    if isinstance(content, list):
        content = "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else None


# Not space by the schema's own rule: JSON Schema's \S is ECMA's, whose space is not Python's isspace()
# (which also counts \x1c-\x1f and \x85), so a schema-valid prompt is never refused as blank.
_NOT_SPACE = re.compile("[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]")


def prompt_of(req: ChatCompletionRequest) -> str:
    """The last user message's text: what the router reads."""
    for msg in reversed(req.messages):
        if msg.role == "user" and (text := _text_of(msg)) and _NOT_SPACE.search(text):
            return text
    raise ChatProxyError(422, "messages: no user message with text content")


def input_tokens(api, req: ChatCompletionRequest) -> int:
    """What the provider bills as input: every message's text, counted by the router's tokenizer
    (as one text: WordPiece never joins tokens across the line break, and a long conversation is then
    counted from samples once, not message by message)."""
    return api.limiter.count("\n".join(text for msg in req.messages if (text := _text_of(msg))))


_PARTS = {"image_url": "vision", "input_image": "vision", "image": "vision", "input_audio": "audio", "audio": "audio"}


def _needs(payload: dict[str, Any]) -> list[str]:
    """What the request takes beyond text, read the way OpenAI's API asks for it: image or audio
    content parts, audio answers, tools (or the older functions), a JSON mode or schema."""
    needs = {_PARTS[part["type"]] for msg in payload.get("messages") or [] if isinstance(msg.get("content"), list)
             for part in msg["content"] if isinstance(part, dict) and part.get("type") in _PARTS}
    if isinstance(payload.get("modalities"), list) and "audio" in payload["modalities"]:
        needs.add("audio")
    if payload.get("tools") or payload.get("functions"):
        needs.add("tools")
    kind = payload["response_format"].get("type") if isinstance(payload.get("response_format"), dict) else None
    needs |= {"json_object": {"json_mode"}, "json_schema": {"json_schema"}}.get(kind, set())
    return sorted(needs)


def _earlier_turns(req: ChatCompletionRequest) -> str:
    """The conversation before the last user message, one `role: text` line per message, for the
    judge: an answer to a follow-up is graded in its context."""
    last = max(i for i, m in enumerate(req.messages) if m.role == "user")
    return "\n".join(f"{msg.role}: {text}" for msg in req.messages[:last] if (text := _text_of(msg)) and _NOT_SPACE.search(text))


async def _route(api, options: dict[str, Any], prompt: str) -> dict[str, Any]:
    try:
        route_req = RouteRequest(prompt=api.limiter.routing_text(prompt), **options)  # the provider gets it whole
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        raise ChatProxyError(422, f"barp.{loc}: {err.get('msg')}") from None
    from serve.app import RouteRefused
    from serve.guard import GuardError

    try:
        routed = await api.route_request(route_req, whole_prompt=prompt)
    except (GuardError, RouteRefused) as e:  # the route's own refusal, told in the chat endpoint's shape
        raise ChatProxyError(e.status, str(e)) from None
    return {"request_id": routed.request_id, "model": routed.model, "policy_version": routed.policy_version,
            "preference": routed.preference, **({"cost_unmet": True} if routed.cost_unmet else {}),
            **({"context_unmet": True} if routed.context_unmet else {})}


async def forward_chat(api, req: ChatCompletionRequest):
    model = req.model  # or a name the client sends for one of ours
    if model != AUTO and model not in api.models:
        model = api.settings.alias_target(model) or model
    prompt = prompt_of(req)  # required for a named model too: the schema promises one rule for both
    if model != AUTO and model not in api.models:
        aliases = f" or an alias ({list(api.settings.model_aliases)})" if api.settings.model_aliases else ""
        raise ChatProxyError(422, f"model: must be {AUTO!r} or one of {api.models}{aliases}, got {model!r}")
    if model != AUTO and model not in api.settings.upstreams:
        raise ChatProxyError(422, f"model: no upstream configured for {model!r}; use {AUTO!r} or one of {api.chat_models}")
    wanted = req.barp.candidates if req.barp and req.barp.candidates else []
    fallbacks = req.barp.fallbacks if req.barp and req.barp.fallbacks else []
    for field, names in (("barp.candidates", wanted), ("barp.fallbacks", fallbacks)):
        if unreachable := sorted(set(names) - set(api.settings.upstreams)):
            raise ChatProxyError(422, f"{field}: no upstream for {unreachable}; chat can use {api.chat_models}")
    from serve.guard import CLIENT

    client = CLIENT.get()  # a named client stays within its models
    if client is not None and (refused := client.refusal("barp.candidates" if wanted else "barp.fallbacks" if fallbacks else "model",
                                                         [*wanted, *fallbacks, *([] if model == AUTO else [model])])):
        raise ChatProxyError(403, refused)
    payload = req.model_dump(exclude_unset=True, exclude={"barp"})
    if model != AUTO:
        return await _named(api, req, payload, [model, *(m for m in fallbacks if m != model)])
    try:
        return await _auto(api, req, prompt, payload, client)
    except ChatProxyError as e:
        # barp-auto's own attempts all failed at their providers (not a refusal of the request): the fallbacks' turn
        if not fallbacks or not (e.status == 429 or e.status >= 500 or e.code == "context_length_exceeded"):
            raise
        return await _named(api, req, payload, fallbacks, [f"{AUTO} ({e.status})"], e)


async def _named(api, req: ChatCompletionRequest, payload: dict[str, Any], chain: list[str], failed: list[str] | None = None,
                 before: ChatProxyError | None = None):
    """A model the client named: its answer or its failure. With `barp.fallbacks`, the next model in
    `chain` is tried when one fails or is at its concurrency cap, as a gateway's fallbacks do; nothing
    is routed, so nothing is learned. `x-barp-model` names the model that answered. `failed` and
    `before`: what failed before the chain (barp-auto's own attempts, whose fallbacks these are)."""
    failed = list(failed or [])
    errors: list[UpstreamError] = [UpstreamError(before.status, str(before))] if before is not None else []
    for model in chain:
        if (slot := api.upstream_slots.take(model)) is None:
            errors.append(AtCapacity(model, api.upstream_slots))
            failed.append(f"{model} (429)")
            continue
        try:
            resp = await _answer(api, req, model, {**payload, "model": model}, {}, slot)
        except UpstreamError as e:
            errors.append(e)
            failed.append(f"{model} ({e.status})")
            continue
        if len(chain) > 1 or failed:
            resp.headers[MODEL_HEADER] = model
            if failed:
                resp.headers[FAILED_OVER_HEADER] = ", ".join(failed)
        return resp
    capped = all(isinstance(e, AtCapacity) for e in errors)
    raise _exhausted(errors, failed, "rate_limit_exceeded" if capped else None,
                     f"; retry shortly or use {AUTO!r}" if capped and len(failed) == 1 else "")


async def _auto(api, req: ChatCompletionRequest, prompt: str, payload: dict[str, Any], client=None):
    """Route among the models this service can forward to (one without an upstream would only turn
    the request into a 502), skipping those whose breaker is open, at their concurrency cap, or that
    refused a request as long as this one as too long; when the chosen provider fails,
    withdraw that decision and route again among the models not yet tried (`failover.attempts`).
    `client`: the named client the request came from, which chooses among its own models only."""
    if not api.chat_models:
        raise ChatProxyError(503, "upstreams: none configured; chat completions need at least one (upstreams: in the serve config)")
    options = req.barp.model_dump(exclude_unset=True) if req.barp else {}
    limit = options.pop("max_latency_s", None)
    options.pop("fallbacks", None)  # tried after this, by forward_chat

    def length() -> int:
        """The request as its provider bills and bounds it: every message, and the answer's cap if set;
        the messages counted once, when first read."""
        if "input_tokens" not in options:
            options["input_tokens"] = min(input_tokens(api, req), MAX_TOKEN_COUNT)
        return options["input_tokens"] + options.get("output_tokens", 0)

    # Counted now when the route reads it: max_cost, the context windows, or a budget's estimate (a
    # request that leaves the trade-off to the service may be paced); later if a refusal memory needs it.
    if options.get("max_cost") is not None or api.offer.context_windows or "preference" not in options:
        length()
    cap = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0:
        options["output_tokens"] = min(cap, MAX_TOKEN_COUNT)  # beyond it, larger than any window and any bill
    elif options.get("max_cost") is not None and api.answer_tokens is None:
        raise ChatProxyError(422, "barp.max_cost: needs max_completion_tokens or max_tokens, since the checkpoint "
                                  "assumes no single answer length")
    if needs := _needs(payload):  # models known to lack one are left out (capabilities, live)
        options["needs"] = needs
    allowed = options.get("candidates") or api.chat_models
    if client is not None and client.candidates is not None:
        allowed = [m for m in allowed if m in client.candidates]
        if not allowed:
            raise ChatProxyError(403, f"model: client {client.name!r} may use none of the models chat can reach "
                                      f"({api.chat_models}); its models: {list(client.candidates)}")
    failed: list[dict[str, Any]] = []  # told to the client as barp.failed_over
    errors: list[UpstreamError] = []
    full: set[str] = set()  # chosen, but at their concurrency cap by the time the route came back
    while True:
        left = [m for m in allowed if all(m != f["model"] for f in failed)]
        if not (free := api.upstream_slots.free([m for m in left if m not in full])):
            if failed:  # a model failed and the rest are full: its failure is the answer
                break
            raise ChatProxyError(429, f"every candidate model is at its concurrency cap here "
                                      f"({api.upstream_slots.refusal(left)} requests in flight); retry shortly",
                                 "rate_limit_exceeded", _retry_header(1))
        offered, met = api.upstream_health.offered(free), True
        if api.context_refusals:  # models that refused a request at least this long (serve/context_refusals.py)
            offered = api.context_refusals.fitting(offered, length())
        if limit is not None:  # what a stream's user waits for is its first chunk; a JSON caller, the whole answer
            offered, met = api.upstream_latency.within(offered, "first_token" if req.stream else "answer", limit)
        try:
            routed = await _route(api, {**options, "candidates": offered}, prompt)
        except ChatProxyError:
            if failed:  # none left can take it (its needs): the failure before is the answer
                break
            raise
        if not met:
            routed["latency_unmet"] = True
            api.metrics.limit_unmet("latency")
        if failed:
            routed["failed_over"] = failed
        model = routed["model"]
        # The next choice keeps this request's trade-off (a paced one is not paced twice).
        options["preference"] = routed["preference"]
        if (slot := api.upstream_slots.take(model)) is None:  # filled while the route was decided: choose again
            await api.withdraw(routed["request_id"])
            full.add(model)
            continue
        try:
            return await _answer(api, req, model, {**payload, "model": model}, routed, slot, prompt)
        except UpstreamError as e:
            await api.withdraw(routed["request_id"])  # no answer to rate: neither dropped nor defaulted later
            failed.append({"model": model, "status": e.status, "error": str(e)})
            errors.append(e)
            if isinstance(e, ContextOverflow):
                api.context_refusals.refused(model, length())
            if len(failed) >= api.settings.failover.attempts or len(left) == 1:
                break
            api.metrics.failed_over(model)
    raise _exhausted(errors, [f"{f['model']} ({f['status']})" for f in failed],
                     "context_length_exceeded" if isinstance(errors[-1], ContextOverflow) else None)


def _exhausted(errors: list[UpstreamError], tried: list[str], code: str | None, hint: str = "") -> ChatProxyError:
    """Every model tried failed: the last failure, each model named when more than one was tried, and
    Retry-After when every one said when to come back (the soonest)."""
    last = errors[-1]
    waits = [e.retry_after for e in errors if e.retry_after is not None]
    return ChatProxyError(last.status, (str(last) if len(tried) == 1 else f"{last}; models tried in turn: {', '.join(tried)}") + hint,
                          code, _retry_header(min(waits)) if len(waits) == len(errors) else None)


def answer_cost(usage: Any, price: dict | None) -> float | None:
    """Dollars an answer cost: the provider's reported token usage at the served prices (the same
    rule that priced the training data). None when either is missing or malformed."""
    if not isinstance(usage, dict) or not price:
        return None
    tokens = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    per_mtok = (price.get("input_per_mtok"), price.get("output_per_mtok"))
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens) \
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in per_mtok):
        return None
    return float(token_costs([tokens[0]], tokens[1], [per_mtok[0]], [per_mtok[1]])[0, 0])


def _answer_text(data: dict) -> str:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


async def _answer(api, req: ChatCompletionRequest, model: str, payload: dict[str, Any], barp_info: dict[str, Any],
                  slot: Slot, prompt: str = ""):
    """`_forward`, holding the request's place with the provider (`slot`) until the answer is read; a
    stream's relay keeps it to the stream's end."""
    try:
        result = await _forward(api, req, model, payload, barp_info, prompt, slot)
    except BaseException:  # a failure, or the client gone while the provider was asked
        slot.release()
        raise
    if not isinstance(result, StreamingResponse):
        slot.release()
    return result


async def _forward(api, req: ChatCompletionRequest, model: str, payload: dict[str, Any], barp_info: dict[str, Any],
                   prompt: str, slot: Slot):
    """The upstream's answer as the client will get it; its failures as UpstreamError, recorded in the
    model's breaker. A 429 is the provider limiting this service's key, not the client: a failure; one
    that says when to come back holds the model out until then instead (serve/upstream_health.py)."""
    def failure(e: UpstreamError) -> UpstreamError:
        api.upstream_health.failed(model, str(e))
        api.metrics.upstream_failed(model, e.status)
        return e

    # A routed stream whose client did not ask for usage gets it asked for, and hidden, if so configured.
    hide_usage = bool(req.stream and barp_info and api.settings.upstream_stream_usage
                      and not (payload.get("stream_options") or {}).get("include_usage"))
    if hide_usage:
        payload = {**payload, "stream_options": {**(payload.get("stream_options") or {}), "include_usage": True}}
    started = time.monotonic()

    def timed(kind: str) -> None:
        """How long this answer's provider took (serve/upstream_latency.py), from the request on."""
        seconds = time.monotonic() - started
        api.upstream_latency.observe(model, kind, seconds)
        api.metrics.timed(model, kind, seconds)

    try:
        resp = await api.upstreams.open(model, payload, stream=req.stream)
    except UpstreamError as e:
        raise failure(e) from None
    if resp.status == 429:
        wait = _retry_after(resp.headers)
        resp.release()
        limited = UpstreamError(429, f"upstream {model!r} is rate-limiting this service (HTTP 429"
                                     f"{'' if wait is None else f', retry after {wait:.3g} s'})", wait)
        if wait is None:
            raise failure(limited)
        api.upstream_health.rate_limited(model, min(wait, api.settings.failover.max_retry_after_s), str(limited))
        api.metrics.upstream_failed(model, 429)
        raise limited
    headers = {REQUEST_ID_HEADER: barp_info["request_id"], MODEL_HEADER: model} if barp_info else {}

    async def priced(usage: Any) -> float | None:
        """Price a routed answer and keep the price with its decision, so feedback may omit the cost."""
        cost = answer_cost(usage, api.prices.get(model)) if barp_info else None
        if cost is not None:
            await api.note_answer_cost(barp_info["request_id"], cost)
        return cost

    def judged(answer: str, cost: float | None) -> bool:
        """Hand a priced answer to the judge (`serve/judge.py`) if this one is to be graded."""
        return bool(barp_info and cost is not None and answer and api.judge.wanted()
                    and api.judge.submit(barp_info["request_id"], prompt, answer, _earlier_turns(req)))

    if req.stream and resp.status == 200:
        api.upstream_health.answered(model)
        gather = bool(barp_info) and api.settings.judge.model is not None  # the answer's text, for the judge
        relay = _relay(resp, model, barp_info, failure, priced, judged, timed, slot, hide_usage, gather)
        slot.release_with(relay)  # a stream dropped before its first chunk never runs its own `finally`
        return StreamingResponse(relay, media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})
    try:
        data = await resp.json(content_type=None)
    except (ValueError, UnicodeDecodeError):
        raise failure(UpstreamError(502, f"upstream {model!r} returned non-JSON (HTTP {resp.status})")) from None
    except TimeoutError:
        raise failure(UpstreamError(504, f"upstream {model!r} did not finish its answer in time")) from None
    finally:
        resp.release()
    api.upstream_health.answered(model)  # a 4xx about the request still shows the provider is up
    if barp_info and (overflow := _context_overflow(resp.status, data)):  # a routed request: another model may fit it
        raise ContextOverflow(resp.status, f"upstream {model!r} refused the request as longer than its context window: "
                                           f"{overflow[:300]}")
    if resp.status == 200:
        timed("answer")
    if isinstance(data, dict) and barp_info and resp.status == 200:
        cost = await priced(data.get("usage"))
        data["barp"] = barp_info if cost is None else {**barp_info, "cost": cost}
        if judged(_answer_text(data), cost):
            data["barp"]["judged"] = True
    return JSONResponse(status_code=resp.status, content=data, headers=headers)


async def _relay(resp, model: str, barp_info: dict[str, Any], on_failure, priced, judged, timed, slot: Slot,
                 hide_usage: bool = False, gather: bool = False):
    """The upstream's SSE lines, the first data chunk with `barp` added. When the client goes away
    Starlette cancels this generator and `finally` closes the upstream connection, so the provider
    stops generating (and billing) too. A failure after the first byte cannot fail over (the client
    has the status line and maybe part of an answer); it is told in the stream and counted against
    the model's breaker. A chunk with token usage (the client asked for
    `stream_options.include_usage`) is priced, and the price kept, before it is passed on, so
    feedback sent once the stream ends may omit the cost. With `hide_usage` the service asked for
    the usage itself: the usage-only chunk and the chunks' `usage` fields do not reach the client,
    which then sees the stream it asked for. A priced stream that ends well may be graded by the
    judge, on the text its chunks carried (`gather`: a judge is configured). The waits for the first
    chunk and for the end are `timed`. The provider's `slot` is given back when the stream ends, however."""
    first, waiting = bool(barp_info), True
    cost, text, room = None, [], 65536  # room: characters of the answer still kept for the judge
    try:
        async for line in resp.content:
            if waiting and line.startswith(b"data:"):
                timed("first_token")
                waiting = False
            # Parsed only when something is read from it: the first chunk (it carries `barp`), usage,
            # or the text the judge will grade; every other chunk passes through as it came.
            if barp_info and line.startswith(b"data: {") and (first or gather or hide_usage or b'"usage"' in line):
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    chunk = None
                chunk = chunk if isinstance(chunk, dict) else {}
                if chunk.get("usage"):
                    cost = await priced(chunk["usage"])
                if hide_usage and "usage" in chunk:
                    if chunk.get("choices") == []:
                        continue  # the usage-only chunk the client did not ask for
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}
                    line = b"data: " + json.dumps(chunk).encode() + b"\n"
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") if isinstance(choice, dict) else None
                    piece = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(piece, str) and room > 0:
                        text.append(piece[:room])
                        room -= len(piece)
                if first and chunk:
                    line = b"data: " + json.dumps({**chunk, "barp": barp_info}).encode() + b"\n"
                    first = False
            yield line
        timed("answer")
        judged("".join(text), cost)
    except TimeoutError:
        on_failure(UpstreamError(504, f"upstream {model!r} stopped sending"))
        error = {"error": {"message": f"upstream {model!r} stopped sending", "type": "upstream_timeout", "code": 504}}
        yield b"data: " + json.dumps(error).encode() + b"\n\n"
    except Exception as e:  # noqa: BLE001 - the status line is gone; say it in the stream
        on_failure(UpstreamError(502, f"upstream {model!r} failed mid-stream: {type(e).__name__}"))
        error = {"error": {"message": f"upstream {model!r} failed mid-stream: {type(e).__name__}", "type": "upstream_error",
                           "code": 502}}
        yield b"data: " + json.dumps(error).encode() + b"\n\n"
    finally:
        resp.close()
        slot.release()
