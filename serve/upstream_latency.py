"""How fast each provider answers, as each ingress replica sees it, and which models a request's
latency limit lets barp-auto choose.

Why: the policy learns what a model is worth for a prompt and what it costs; how long its provider
takes is a fact of the moment (its load, its region, a slow deploy) that no training captures.
Each ingress replica times the answers it relays: for a stream, the wait for its first chunk (what
a user watching text appear waits for); for a JSON answer, the whole answer. A chat request's
`barp.max_latency_s` leaves out of barp-auto's candidates every model whose recent `quantile` of
that wait (its last `window` answers here) is over the limit. A model with fewer than `min_samples`
timed answers is kept: a provider is only timed by being tried. When no candidate meets the limit
the fastest one is offered alone, and the answer says so (`barp.latency_unmet`): a slow answer
rather than none.

Leaving models out restricts the request's candidates, which the decision record keeps: its
propensity is over the models offered, and the trainer masks the same models, as it does for the
breakers (serve/upstream_health.py). Per replica and in memory, for the same reason.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from serve.request_limits import within_limit

KINDS = ("first_token", "answer")


class UpstreamLatency:
    def __init__(self, window: int = 100, quantile: float = 0.9, min_samples: int = 5):
        self.window, self.quantile, self.min_samples = window, quantile, min_samples
        self._seconds: dict[tuple[str, str], deque[float]] = {}

    def observe(self, model: str, kind: str, seconds: float) -> None:
        self._seconds.setdefault((model, kind), deque(maxlen=self.window)).append(float(seconds))

    def estimate(self, model: str, kind: str) -> float | None:
        """The recent `quantile` of the wait, None until `min_samples` answers were timed."""
        seen = self._seconds.get((model, kind))
        return float(np.quantile(seen, self.quantile)) if seen and len(seen) >= self.min_samples else None

    def within(self, models: list[str], kind: str, limit_s: float) -> tuple[list[str], bool]:
        """(the models a limit allows, whether any met it): the untimed and the fast enough; else the fastest alone."""
        return within_limit({m: self.estimate(m, kind) for m in models}, limit_s)

    def estimates(self, kind: str) -> dict[str, float]:
        """Every model's estimate of this wait that has one (`min_samples` timings)."""
        return {m: e for (m, k) in self._seconds if k == kind and (e := self.estimate(m, kind)) is not None}

    def snapshot(self) -> dict[str, dict]:
        """Per model and kind: answers timed here, median and `quantile` seconds."""
        out: dict[str, dict] = {}
        for (model, kind), seen in sorted(self._seconds.items()):
            q = np.quantile(seen, [0.5, self.quantile])
            out.setdefault(model, {})[kind] = {"n": len(seen), "p50_s": round(float(q[0]), 4),
                                               f"p{round(self.quantile * 100):d}_s": round(float(q[1]), 4)}
        return out
