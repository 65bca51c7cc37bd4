"""The BaRP reward, shared by the simulator, evaluation and live feedback.

One definition so that training, evaluation and serving can never disagree on what a
round was worth: r = w_q * q - w_c * min(c / tau, 1).
"""
from __future__ import annotations

import numpy as np


def normalized_cost(cost: np.ndarray | float, tau: float) -> np.ndarray:
    """Dollar cost scaled by the cap tau and clipped to [0, 1], so it lives on the score's scale."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0 (got {tau})")
    return np.minimum(np.asarray(cost, dtype=np.float64) / tau, 1.0)


def reward(
    score: np.ndarray | float,
    cost: np.ndarray | float,
    w_quality: np.ndarray | float,
    w_cost: np.ndarray | float,
    tau: float,
) -> np.ndarray:
    """Scalar reward of one (or a batch of) routed request(s); broadcasts like numpy."""
    return np.asarray(w_quality) * np.asarray(score, dtype=np.float64) - np.asarray(w_cost) * normalized_cost(cost, tau)
