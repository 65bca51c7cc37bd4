"""Routers that need no learning: one fixed model, uniform random, and the per-prompt oracle."""
from __future__ import annotations

import numpy as np

from barp_ray.evaluation.baselines.base import ORACLE, REFERENCE, SINGLE, Router, argmax_choice
from envs.reward import reward


class SingleModel(Router):
    """Always the same model: the floor any router must clear at that model's price."""

    family = SINGLE
    tracks_preference = False

    def __init__(self, models: tuple[str, ...], index: int):
        self.k = len(models)
        self.index = int(index)
        self.name = models[self.index]

    def choose(self, embeddings, preference):
        out = np.zeros((len(embeddings), self.k))
        out[:, self.index] = 1.0
        return out


class UniformRandom(Router):
    """Each model with probability 1/K, scored in expectation (no sampling noise)."""

    name = "random"
    family = REFERENCE
    tracks_preference = False

    def __init__(self, k: int):
        self.k = int(k)

    def choose(self, embeddings, preference):
        return np.full((len(embeddings), self.k), 1.0 / self.k)


class Oracle(Router):
    """The best reward per prompt at w, read from the *test* outcomes: an upper bound, not a router."""

    name = "oracle"
    family = ORACLE

    def __init__(self, scores: np.ndarray, costs: np.ndarray, tau: float):
        self.scores, self.costs, self.tau = scores, costs, float(tau)

    def choose(self, embeddings, preference):
        if len(embeddings) != len(self.scores):
            raise ValueError(f"oracle built for {len(self.scores)} prompts, asked about {len(embeddings)}")
        return argmax_choice(reward(self.scores, self.costs, preference[0], preference[1], self.tau))
