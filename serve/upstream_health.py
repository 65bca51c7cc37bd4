"""Which providers barp-auto may choose now: a circuit breaker per model, in each ingress replica.

Why: the policy knows prompts, not outages. A provider that is down fails every request sent to it
(a 502 after its connection retries, or a 504 after the whole timeout), and the policy keeps
choosing it for the prompts it is best at. After `failures_to_open` failures in a row a model is
left out of barp-auto's candidates for `cooldown_s`; then it is offered again ("half open"), and
one more failure takes it out for another cooldown, while one answer closes it.

Leaving a model out is a restriction of the request's candidates, which the decision record keeps:
its propensity is over the models actually offered, so training on it stays unbiased (the trainer
masks the same models). The breaker only advises: when every candidate is out, all are offered
rather than turning the request away unanswered.

A provider that answers 429 and says when to come back (`Retry-After`) is not down but out of quota:
the model is held out for that long (`rate_limited`), with no failure counted toward its breaker,
and offered again when the time is up, without a half-open trial. Guessing a cooldown would either
waste requests on a provider that refuses them or keep a model out after its quota came back.

Per replica and in memory: each ingress replica learns of an outage from its own traffic within
`failures_to_open` requests, with no shared state to fail or to wait on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Breaker:
    in_a_row: int = 0
    opened_at: float | None = None
    failures: int = 0
    last_error: str | None = None
    held_until: float | None = None  # a rate limit's end, as the provider stated it


class UpstreamHealth:
    def __init__(self, failures_to_open: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, bool], None] | None = None):
        self.failures_to_open, self.cooldown_s, self.clock = failures_to_open, cooldown_s, clock
        self.on_change = on_change  # (model, left out?) when a model's state flips: the ingress's gauge
        self._breakers: dict[str, _Breaker] = {}

    def state(self, model: str) -> str:
        b = self._breakers.get(model)
        if b is not None and b.held_until is not None and self.clock() < b.held_until:
            return "rate_limited"
        if b is None or b.opened_at is None:
            return "closed"
        return "open" if self.clock() - b.opened_at < self.cooldown_s else "half_open"

    def offered(self, models: list[str]) -> list[str]:
        """The models barp-auto may choose among: all but those whose cooldown or rate limit is
        running; all of them if that leaves none."""
        ok = [m for m in models if self.state(m) not in ("open", "rate_limited")]
        return ok or list(models)

    @staticmethod
    def _out(b: _Breaker) -> bool:
        return b.opened_at is not None or b.held_until is not None

    def rate_limited(self, model: str, seconds: float, error: str) -> None:
        """The provider refused for quota and said for how long: out until then, breaker untouched."""
        b = self._breakers.setdefault(model, _Breaker())
        was_out = self._out(b)
        b.held_until = max(b.held_until or 0.0, self.clock() + seconds)
        b.failures += 1
        b.last_error = error
        if not was_out and self.on_change:
            self.on_change(model, True)

    def failed(self, model: str, error: str) -> None:
        b = self._breakers.setdefault(model, _Breaker())
        b.in_a_row += 1
        b.failures += 1
        b.last_error = error
        if b.in_a_row >= self.failures_to_open:
            was_closed = b.opened_at is None
            b.opened_at = self.clock()  # a failed half-open trial starts a new cooldown
            if was_closed and self.on_change:
                self.on_change(model, True)

    def answered(self, model: str) -> None:
        b = self._breakers.get(model)
        if b is None:
            return
        was_out = self._out(b)
        b.in_a_row, b.opened_at = 0, None
        if b.held_until is not None and self.clock() >= b.held_until:
            b.held_until = None  # an answer during the hold came from a request sent before it: the hold stays
        if was_out and not self._out(b) and self.on_change:
            self.on_change(model, False)

    def snapshot(self) -> dict[str, dict]:
        """Every model that has failed here: its state, failures in a row and in all, the last error."""
        now = self.clock()

        def reopens_in(b: _Breaker) -> float | None:
            waits = [*([self.cooldown_s - (now - b.opened_at)] if b.opened_at is not None else []),
                     *([b.held_until - now] if b.held_until is not None else [])]
            return round(max(0.0, *waits), 3) if waits else None

        return {m: {"state": self.state(m), "failures_in_a_row": b.in_a_row, "failures": b.failures,
                    "last_error": b.last_error, "reopens_in_s": reopens_in(b)}
                for m, b in sorted(self._breakers.items())}
