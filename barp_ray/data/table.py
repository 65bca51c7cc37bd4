"""`RoutingTable`: the full-information log every router is trained and judged on.

Rows are prompts, columns are candidate LLMs. The table itself is full-information (every
model's score and cost for every prompt); bandit trainers only ever see it through the
environment, which reveals the chosen column alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """A routing data file or table is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelPrice:
    """Dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float


@dataclass(frozen=True)
class RoutingTable:
    prompts: np.ndarray  # [N] str
    tasks: np.ndarray  # [N] str
    scores: np.ndarray  # [N, K] float32 in [0, 1]
    costs: np.ndarray  # [N, K] float64 dollars >= 0
    models: tuple[str, ...]
    prices: dict[str, ModelPrice] = field(default_factory=dict)
    sizes: dict[str, float] = field(default_factory=dict)  # billions of parameters, where the source says
    source: str = "memory"
    cost_note: str = ""

    def __post_init__(self) -> None:
        n = len(self.prompts)
        k = len(self.models)
        where = f"routing table from {self.source}"
        if n == 0:
            raise DataError(f"{where}: no prompts")
        if k < 2:
            raise DataError(f"{where}: need at least 2 models, got {k}")
        if len(set(self.models)) != k:
            raise DataError(f"{where}: duplicate model names in {list(self.models)}")
        if len(self.tasks) != n:
            raise DataError(f"{where}: {len(self.tasks)} task names for {n} prompts")
        for name, arr in (("scores", self.scores), ("costs", self.costs)):
            if arr.shape != (n, k):
                raise DataError(f"{where}: {name} has shape {arr.shape}, expected ({n}, {k})")
            if not np.all(np.isfinite(arr)):
                bad = np.argwhere(~np.isfinite(arr))[0]
                raise DataError(f"{where}: {name} is not finite at prompt {bad[0]}, model {self.models[bad[1]]!r}")
        if self.scores.min() < 0 or self.scores.max() > 1:
            r, c = np.unravel_index(np.argmax((self.scores < 0) | (self.scores > 1)), self.scores.shape)
            raise DataError(
                f"{where}: score {self.scores[r, c]} outside [0, 1] at prompt {r}, model {self.models[c]!r}"
            )
        if self.costs.min() < 0:
            r, c = np.unravel_index(np.argmin(self.costs), self.costs.shape)
            raise DataError(f"{where}: negative cost {self.costs[r, c]} at prompt {r}, model {self.models[c]!r}")

    @property
    def n(self) -> int:
        return len(self.prompts)

    @property
    def k(self) -> int:
        return len(self.models)

    def subset(self, index: np.ndarray) -> "RoutingTable":
        index = np.asarray(index)
        return RoutingTable(
            prompts=self.prompts[index],
            tasks=self.tasks[index],
            scores=self.scores[index],
            costs=self.costs[index],
            models=self.models,
            prices=self.prices,
            sizes=self.sizes,
            source=self.source,
            cost_note=self.cost_note,
        )

    def only_models(self, models) -> "RoutingTable":
        """The same prompts with only `models`' columns, in the order given (e.g. one model held out)."""
        missing = [m for m in models if m not in self.models]
        if missing:
            raise DataError(f"routing table from {self.source}: no model(s) {missing}; it has {list(self.models)}")
        cols = [self.models.index(m) for m in models]
        return RoutingTable(
            prompts=self.prompts, tasks=self.tasks, scores=self.scores[:, cols], costs=self.costs[:, cols],
            models=tuple(models), prices={m: p for m, p in self.prices.items() if m in models},
            sizes={m: v for m, v in self.sizes.items() if m in models}, source=self.source, cost_note=self.cost_note,
        )

    def task_names(self) -> list[str]:
        return sorted(set(self.tasks.tolist()))

    def task_rows(self, task: str) -> np.ndarray:
        """Row indices of one task's prompts (for `subset`); a DataError naming the tasks there are if none."""
        rows = np.flatnonzero(self.tasks == task)
        if not len(rows):
            raise DataError(f"routing table from {self.source}: no prompt of task {task!r}; it has {', '.join(self.task_names())}")
        return rows


def make_table(
    prompts, tasks, scores, costs, models, prices=None, source="memory", cost_note="", sizes=None
) -> RoutingTable:
    """Build a table from plain sequences, coercing dtypes once here rather than in every loader."""
    return RoutingTable(
        prompts=np.asarray(list(prompts), dtype=object),
        tasks=np.asarray([str(t) for t in tasks], dtype=object),
        scores=np.asarray(scores, dtype=np.float32),
        costs=np.asarray(costs, dtype=np.float64),
        models=tuple(str(m) for m in models),
        prices=dict(prices or {}),
        sizes={str(m): float(v) for m, v in (sizes or {}).items()},
        source=str(source),
        cost_note=cost_note,
    )
