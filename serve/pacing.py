"""Budget pacing: the quality weight for routes that send no preference, chosen to fit a spend target.

An operator sets `budget: {dollars_per_1k: ...}` live; clients that want the service's trade-off
omit `preference`. Each router replica keeps its own recent such routes (what the policy read of
the prompt, its input token count, the models it allowed, explore or greedy) and every `every` of
them re-runs `barp calibrate`'s scan on that window, in a thread of its own: the largest w_q whose
estimated spend fits. One rule, offline and live; no controller gain to tune, and a change in the
traffic's mix moves the weight within one window. Replicas need no shared state: each one's routes
fit the budget, so all of them do. A route is priced at the offer's prices with an assumed answer
length, except, with `price_by: bill` (the default), a model whose recent feedback the trainer has
seen at least 20 times: that one at its mean billed cost, since answer lengths are what an
estimate gets wrong (bench/budget_pacing.py).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from barp_ray.data.llmrouter import route_costs
from serve.budget import spend_curve, within_budget
from serve.schemas import DEFAULT_KNOB
from serve.settings import Budget, ExplorationSettings

GRID = np.round(np.linspace(0.0, 1.0, 51), 2)  # 0.02 apart: a scan of 512 routes is 51 small forwards
FIRST_SCAN = 16  # paced routes before a new budget's first choice
DEFAULT_PREFERENCE = (DEFAULT_KNOB, round(1.0 - DEFAULT_KNOB, 6))  # a route without a preference, while no budget is set


@dataclass
class PacedRoute:
    x: np.ndarray  # what the policy read of the prompt
    tokens: int
    mask: np.ndarray  # the models it allowed, over the offer's order at the time
    greedy: bool


class BudgetPacer:
    def __init__(self, budget: Budget, models: tuple[str, ...]):
        self.budget, self.models = budget, models
        self.w_q = DEFAULT_PREFERENCE[0]  # until the first scan: the API's default
        self.estimate: float | None = None  # estimated $ per 1,000 paced routes at w_q, on the last window
        self.scans = 0
        self.scanning = False
        self.billed: list[str] = []  # the models the last scan priced at their bills
        self._window: deque[PacedRoute] = deque(maxlen=budget.window)
        self._since = 0
        self._lock = threading.Lock()

    def retarget(self, budget: Budget, models: tuple[str, ...]) -> None:
        """A new live budget (or offer): scan at the next route. Routes logged under another model set
        cannot be priced over this one, so a changed set starts the window afresh."""
        with self._lock:
            if models != self.models:
                self._window.clear()
            self._window = deque(self._window, maxlen=budget.window)
            self.budget, self.models = budget, models
            self._since = budget.every

    def preference(self) -> list[float]:
        return [self.w_q, round(1.0 - self.w_q, 6)]

    def observe(self, route: PacedRoute) -> None:
        with self._lock:
            if len(route.mask) != len(self.models):  # routed under the model set before a change
                return
            self._window.append(route)
            self._since += 1

    def due(self) -> bool:
        """Every `every` paced routes; the first time as soon as FIRST_SCAN are in, so a new budget
        does not spend at the default weight for a whole interval."""
        if self.scanning or not self._window:
            return False
        return self._since >= self.budget.every or (self.scans == 0 and len(self._window) >= min(FIRST_SCAN, self.budget.every))

    def rescan(self, policy, prices: dict, exploration: ExplorationSettings, bills: dict[str, float] | None = None) -> None:
        """Choose w_q on the window as it is now (the routes keep coming while this runs). `bills`:
        models' recent mean billed dollars per route, which replace the estimate with `price_by: bill`."""
        with self._lock:
            rows, budget, models = list(self._window), self.budget, self.models
            self._since = 0
        if not rows or tuple(policy.models) != models:
            return
        costs = route_costs(prices, models, np.array([r.tokens for r in rows]), budget.output_tokens)
        billed = sorted(m for m in (bills or {}) if m in models) if budget.price_by == "bill" else []
        for m in billed:  # what the answers cost, whatever their length: the estimate assumes one
            costs[:, models.index(m)] = bills[m]
        self.billed = billed
        curve = spend_curve(policy, np.stack([r.x for r in rows]), costs, exploration, GRID,
                            masks=np.stack([r.mask for r in rows]), greedy=np.array([r.greedy for r in rows]))
        pick = within_budget(curve, budget.dollars_per_1k) or curve[0]  # none fits: the cheapest routing
        self.w_q, self.estimate = pick.w_q, pick.dollars_per_1k
        self.scans += 1

    def state(self) -> dict:
        return {"dollars_per_1k": self.budget.dollars_per_1k, "output_tokens": self.budget.output_tokens,
                "price_by": self.budget.price_by, "preference": self.preference(), "estimated_dollars_per_1k": self.estimate,
                "priced_by_bill": self.billed, "window": len(self._window), "scans": self.scans}
