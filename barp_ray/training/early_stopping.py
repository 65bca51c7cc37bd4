"""Early stopping on held-out train prompts: keep the weights that route best over the whole range.

Longer training fits the train prompts and routes worse on new ones (on LLMRouter's validation
split 400 iterations lost to 300, mostly at w_q = 1), and where that turn comes differs by seed
and setting. So a share of the train prompts never enters the bandit rounds, and the checkpoint
keeps the weights with the best mean greedy reward over the 11-point preference sweep on them.
The held-out prompts are scored with every model's outcome, as the full-information routers'
own model selection (kNN's k, the MLP's early stopping) scores its validation prompts; the
policy itself still learns from the chosen model's reward only.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

SWEEP = tuple((round(w_q, 1), round(1.0 - w_q, 1)) for w_q in np.linspace(0.0, 1.0, 11))


def split_prompts(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) row indices, sorted; the held-out share is at least one prompt."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ValueError(f"training.validation_fraction {fraction} leaves no prompt to train on ({n} prompts)")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass
class EarlyStopping:
    table: object  # RoutingTable of the held-out prompts
    embeddings: np.ndarray
    tau: float
    best_reward: float = -np.inf
    best_iteration: int = 0
    best_weights: dict | None = field(default=None, repr=False)

    def sweep_reward(self, module) -> float:
        from barp_ray.scoring import greedy_actions, score_actions

        return float(np.mean([score_actions(self.table, greedy_actions(module, self.embeddings, w), w, self.tau).reward
                              for w in SWEEP]))

    def observe(self, iteration: int, module, weights) -> float:
        """Score the current policy; remember `weights()` (a callable: copied only when best)."""
        reward = self.sweep_reward(module)
        if reward > self.best_reward:
            self.best_reward, self.best_iteration = reward, iteration
            self.best_weights = copy.deepcopy(weights())
        return reward
