"""What every router in an evaluation is: a name, the information it was trained with, and a choice matrix.

The `family` is printed next to every figure so that a reader never compares a router that saw
every model's outcome at training time with one that only saw the outcome of its own pick
without being told.
"""
from __future__ import annotations

import numpy as np

BARP = "bandit feedback (REINFORCE)"
REFERENCE = "reference"
SINGLE = "single model"
FULL_INFO = "full information"
BANDIT = "bandit feedback"
ORACLE = "oracle (test outcomes)"


class Router:
    """A router maps (prompt embeddings, preference) to a choice matrix [N, K] of routing probabilities.

    `tracks_preference` is False for routers that ignore w (single models, random): they are one
    point in the cost-quality plane, whatever the preference.
    """

    name: str = "router"
    family: str = REFERENCE
    tracks_preference: bool = True

    def choose(self, embeddings: np.ndarray, preference) -> np.ndarray:
        raise NotImplementedError


def argmax_choice(values: np.ndarray) -> np.ndarray:
    """One-hot choice of the best column per row (first one on ties)."""
    out = np.zeros_like(values, dtype=np.float64)
    out[np.arange(len(values)), values.argmax(axis=1)] = 1.0
    return out


def predicted_reward(scores_hat: np.ndarray, cost_hat: np.ndarray, preference) -> np.ndarray:
    """w_q * predicted score - w_c * predicted normalised cost, for routers that predict both."""
    return float(preference[0]) * scores_hat - float(preference[1]) * cost_hat
