"""A Python client for a served router, for applications that call their models themselves.

    from barp_ray.client import RouterClient

    router = RouterClient("http://127.0.0.1:8000", token=os.environ["BARP_API_TOKEN"])
    with router.route("Prove that there are infinitely many primes.", preference=0.7) as decision:
        started = time.monotonic()
        answer, dollars = call_my_provider(decision.model, prompt)   # raises if the provider fails
        decision.feedback(score=grade(answer), cost=dollars, latency_s=time.monotonic() - started)

Why a client: the loop that teaches the router has three calls, and the easy mistakes are in
between them. A provider that fails leaves a decision with no answer to rate; left alone it
expires (or is closed with the default reward) and may teach the router that the model was bad
for the prompt, so the `with` block withdraws it when the block raises before any feedback.
A connection that drops, or a replica that is replaced (502, 503, 504), is retried: a route again
is a new decision (the lost one expires), and a feedback whose first attempt did land answers 409
"already recorded" to the retry, which is the answer to that attempt, not an error. Other refusals
raise `RouterError` with the service's one-line message. Chat completions need no client of
their own: any OpenAI client works against the service (`model: "barp-auto"`).

Standard library only, so it installs anywhere the application runs.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

RETRIED = (502, 503, 504)


class RouterError(RuntimeError):
    """The service refused a call (`status`, its one-line `message`), or could not be reached (status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status, self.message = status, message


@dataclass
class Decision:
    """One routed request: which model to call, and the handle to rate or withdraw it."""

    request_id: str
    model: str
    propensity: float
    probabilities: dict[str, float]
    policy_version: int
    preference: list[float]
    mode: str
    _client: "RouterClient" = field(repr=False)
    latency_unmet: bool = False  # no candidate's reported latency met max_latency_s: the fastest was chosen
    cost_unmet: bool = False  # no candidate's estimated cost met max_cost: the cheapest was chosen
    context_unmet: bool = False  # the request overflows every candidate's known context window: the largest was chosen
    done: str | None = None  # "feedback" or "withdrawn" once either was sent

    def feedback(self, score: float, cost: float | None = None, latency_s: float | None = None) -> dict[str, Any]:
        """The answer's score in [0, 1], what it cost in dollars and (optional) how many seconds the
        model took, which routes' `max_latency_s` reads; the service's answer (its `reward`, or
        `{"duplicate": true}` when a retried post had already landed)."""
        body = {"request_id": self.request_id, "score": score, **({} if cost is None else {"cost": cost}),
                **({} if latency_s is None else {"latency_s": latency_s})}
        out = self._client._call("/v1/feedback", body, duplicate_ok=True)
        self.done = "feedback"
        return out

    def withdraw(self) -> None:
        """No answer to rate (the provider failed): the decision is never trained on."""
        self._client._call("/v1/feedback/withdraw", {"request_id": self.request_id})
        self.done = "withdrawn"

    def __enter__(self) -> "Decision":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.done is None:
            try:
                self.withdraw()
            except RouterError:
                pass  # the block's own error matters more; the decision then expires as unanswered
        return None


class RouterClient:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.2):
        self.base_url, self.token, self.timeout_s = base_url.rstrip("/"), token, timeout_s
        self.retries, self.backoff_s = retries, backoff_s

    def route(self, prompt: str, preference: float | list[float] | dict[str, float] | None = None,
              mode: str = "explore", candidates: list[str] | None = None, max_latency_s: float | None = None,
              max_cost: float | None = None, input_tokens: int | None = None, output_tokens: int | None = None,
              needs: list[str] | None = None) -> Decision:
        """A routing decision (`preference`: a knob k, [w_q, w_c] or {quality, cost}; None: the
        service's default for this client; `max_latency_s`: leave out models reported slower;
        `max_cost`: leave out models whose estimate for this request, `input_tokens` and
        `output_tokens` if given, is dearer; the same two counts are what the service's
        `context_windows` must hold; `needs`: what your request takes beyond text, e.g. ["vision"],
        which leaves out models the service's `capabilities` say lack it). Use it as a context manager
        to withdraw it on failure."""
        body: dict[str, Any] = {"prompt": prompt, "mode": mode}
        for key, value in (("preference", preference), ("candidates", candidates), ("max_latency_s", max_latency_s),
                           ("max_cost", max_cost), ("input_tokens", input_tokens), ("output_tokens", output_tokens),
                           ("needs", needs)):
            if value is not None:
                body[key] = value
        r = self._call("/v1/route", body)
        return Decision(r["request_id"], r["model"], r["propensity"], r["probabilities"], r["policy_version"],
                        r["preference"], r["mode"], self, latency_unmet=bool(r.get("latency_unmet")),
                        cost_unmet=bool(r.get("cost_unmet")), context_unmet=bool(r.get("context_unmet")))

    def _call(self, path: str, body: dict, duplicate_ok: bool = False) -> dict[str, Any]:
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                message = _message(e.read())
                if duplicate_ok and attempt > 0 and e.code == 409 and "already recorded" in message:
                    return {"request_id": body["request_id"], "duplicate": True}  # our earlier attempt landed
                if e.code not in RETRIED or attempt == self.retries:
                    raise RouterError(e.code, message) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if attempt == self.retries:
                    reason = getattr(e, "reason", e)
                    raise RouterError(0, f"{self.base_url}{path}: no answer ({type(reason).__name__}: {reason})") from None
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("error", raw.decode("utf-8", "replace")))
    except (ValueError, AttributeError):
        return raw.decode("utf-8", "replace")
