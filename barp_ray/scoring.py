"""Test-split scoring of a router against the reference points every router must beat.

All numbers are full-information *evaluation* on held-out prompts (every model's outcome is
known there); training never sees these tables.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from barp_ray.data.table import RoutingTable
from envs.reward import reward


def reward_matrix(table: RoutingTable, preference: tuple[float, float], tau: float) -> np.ndarray:
    """[N, K]: what each model would earn on each prompt at preference w."""
    return reward(table.scores, table.costs, preference[0], preference[1], tau)


@dataclass(frozen=True)
class RouterScore:
    reward: float
    quality: float
    cost: float

    def as_dict(self) -> dict:
        return asdict(self)


def score_actions(table: RoutingTable, actions: np.ndarray, preference, tau: float) -> RouterScore:
    rows = np.arange(table.n)
    return RouterScore(
        reward=float(reward_matrix(table, preference, tau)[rows, actions].mean()),
        quality=float(table.scores[rows, actions].mean()),
        cost=float(table.costs[rows, actions].mean()),
    )


def best_single_model(table: RoutingTable, preference, tau: float) -> int:
    """The model with the best mean reward over the table's prompts at preference w."""
    return int(np.argmax(reward_matrix(table, preference, tau).mean(axis=0)))


def reference_points(train: RoutingTable, test: RoutingTable, preference, tau: float) -> dict[str, RouterScore]:
    """Uniform-random routing, the single model that is best on *train*, the largest/priciest model, the oracle."""
    r_test = reward_matrix(test, preference, tau)
    best_single = best_single_model(train, preference, tau)
    priciest = int(np.argmax(train.costs.mean(axis=0)))
    return {
        "random": RouterScore(
            reward=float(r_test.mean()), quality=float(test.scores.mean()), cost=float(test.costs.mean())
        ),
        f"best_single({train.models[best_single]})": score_actions(test, np.full(test.n, best_single), preference, tau),
        f"priciest({train.models[priciest]})": score_actions(test, np.full(test.n, priciest), preference, tau),
        "oracle": score_actions(test, r_test.argmax(axis=1), preference, tau),
    }


def greedy_actions(module, embeddings: np.ndarray, preference, batch_size: int = 8192) -> np.ndarray:
    import torch

    out = []
    w = torch.tensor(preference, dtype=torch.float32)
    for i in range(0, len(embeddings), batch_size):
        e = torch.from_numpy(np.ascontiguousarray(embeddings[i : i + batch_size]))
        p = module.action_probabilities(e, w.expand(len(e), 2))
        out.append(p.argmax(-1).numpy())
    return np.concatenate(out)
