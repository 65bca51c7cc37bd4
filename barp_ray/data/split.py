"""Train/test splits: random in-distribution, or whole tasks held out (the paper's unseen-task setting)."""
from __future__ import annotations

import numpy as np

from barp_ray.data.table import DataError, RoutingTable


def random_split(table: RoutingTable, test_fraction: float, seed: int) -> tuple[RoutingTable, RoutingTable]:
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(table.n)
    n_test = max(1, int(round(table.n * test_fraction)))
    if n_test >= table.n:
        raise DataError(f"{table.source}: {table.n} prompts are too few to split")
    return table.subset(np.sort(order[n_test:])), table.subset(np.sort(order[:n_test]))


def task_split(table: RoutingTable, held_out_tasks: list[str]) -> tuple[RoutingTable, RoutingTable]:
    known = set(table.task_names())
    missing = [t for t in held_out_tasks if t not in known]
    if missing:
        raise DataError(f"{table.source}: held-out task(s) {missing} not in the data; tasks are {sorted(known)}")
    test_mask = np.isin(table.tasks.astype(str), np.asarray(held_out_tasks, dtype=str))
    if test_mask.all():
        raise DataError(f"{table.source}: holding out {held_out_tasks} leaves nothing to train on")
    return table.subset(np.flatnonzero(~test_mask)), table.subset(np.flatnonzero(test_mask))
