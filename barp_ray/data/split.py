"""Train/test splits: random in-distribution, the same number of prompts from each of some tasks
(a held-out set weighted like a task-balanced test file), or whole tasks held out (the paper's
unseen-task setting)."""
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


def per_task_split(table: RoutingTable, per_task: int, tasks: list[str], seed: int,
                   repeat_share: dict[str, float] | None = None) -> tuple[RoutingTable, RoutingTable]:
    """`per_task` random prompts of each task in `tasks` (all tasks if empty) held out; the rest,
    every task included, trains. LLMRouter's test file is 10 tasks x 50 prompts while its train
    file is 14 tasks in uneven shares: a random validation split weights tasks like the train file,
    this one like the test file.

    `repeat_share` {task: share}: that share of the task's held-out prompts also stays among the
    training prompts. LLMRouter's train file holds the whole pool of some tasks (all 448 GPQA and
    all 164 HumanEval questions), so the test file's prompts of those tasks are repeats of train
    prompts, answered again: a held-out set with no repeats rewards generalising and never
    remembering, which the test file does not."""
    names = table.task_names()
    chosen = list(tasks) or list(names)
    repeat_share = dict(repeat_share or {})
    missing = [t for t in [*chosen, *repeat_share] if t not in set(names)]
    if missing:
        raise DataError(f"{table.source}: task(s) {missing} not in the data; tasks are {sorted(names)}")
    not_held = [t for t in repeat_share if t not in chosen]
    if not_held:
        raise DataError(f"repeat share for task(s) {not_held} that no prompt is held out of; held out: {chosen}")
    rng = np.random.default_rng(seed)
    repeat_rng = np.random.default_rng([seed, 1])  # its own stream: draws without repeats stay as they were
    labels = table.tasks.astype(str)
    held, repeated = [], []
    for task in chosen:
        rows = np.flatnonzero(labels == task)
        if len(rows) <= per_task:
            raise DataError(f"{table.source}: task {task!r} has {len(rows)} prompts; holding out {per_task} leaves none to train on")
        picked = rng.choice(rows, size=per_task, replace=False)
        held.append(picked)
        share = repeat_share.get(task, 0.0)
        if share > 0:
            repeated.append(repeat_rng.choice(picked, size=int(round(share * per_task)), replace=False))
    test = np.sort(np.concatenate(held))
    kept_out = np.setdiff1d(test, np.concatenate(repeated)) if repeated else test
    return table.subset(np.setdiff1d(np.arange(table.n), kept_out)), table.subset(test)
