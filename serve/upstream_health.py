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


class UpstreamHealth:
    def __init__(self, failures_to_open: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, bool], None] | None = None):
        self.failures_to_open, self.cooldown_s, self.clock = failures_to_open, cooldown_s, clock
        self.on_change = on_change  # (model, left out?) when a model's state flips: the ingress's gauge
        self._breakers: dict[str, _Breaker] = {}

    def state(self, model: str) -> str:
        b = self._breakers.get(model)
        if b is None or b.opened_at is None:
            return "closed"
        return "open" if self.clock() - b.opened_at < self.cooldown_s else "half_open"

    def offered(self, models: list[str]) -> list[str]:
        """The models barp-auto may choose among: all but those whose cooldown is running; all of
        them if that leaves none."""
        ok = [m for m in models if self.state(m) != "open"]
        return ok or list(models)

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
        if b.opened_at is not None and self.on_change:
            self.on_change(model, False)
        b.in_a_row, b.opened_at = 0, None

    def snapshot(self) -> dict[str, dict]:
        """Every model that has failed here: its state, failures in a row and in all, the last error."""
        now = self.clock()
        return {m: {"state": self.state(m), "failures_in_a_row": b.in_a_row, "failures": b.failures,
                    "last_error": b.last_error,
                    "reopens_in_s": (round(max(0.0, self.cooldown_s - (now - b.opened_at)), 3)
                                     if b.opened_at is not None else None)}
                for m, b in sorted(self._breakers.items())}
