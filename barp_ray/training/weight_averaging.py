"""Tail weight averaging (SWA): the checkpoint keeps the mean of the last iterations' weights.

REINFORCE's last iterate is one noisy point: each step follows 4,096 rewards of the chosen model
only, and on LLMRouter's validation split the seed spread of AIQ (0.0015-0.006) is as large as
the gaps to the full-information routers that issue 10 measures. Averaging the weights of the
tail (Izmailov et al. 2018's stochastic weight averaging, with a constant learning rate) keeps
the direction the steps agree on and cancels what they do not, at no cost in rollouts. The policy
still learns from the chosen model's reward only; only the weights written out change. Measured
there: it narrows the seed spread but does not raise the mean (docs/results/preference_range_val),
so it is off by default.
"""
from __future__ import annotations

import numpy as np


class TailAverage:
    """Running mean of learner weights ({module_id: {name: array}}) from iteration `start` on."""

    def __init__(self, iterations: int, average_from: float):
        # average_from = 0.5 of 250 iterations: the mean over iterations 126..250 (125 snapshots).
        self.start = min(iterations, int(np.floor(iterations * average_from)) + 1)
        self.count = 0
        self.mean: dict | None = None

    def wants(self, iteration: int) -> bool:
        return iteration >= self.start

    def observe(self, weights: dict) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = {m: {k: np.array(v, dtype=np.float64) for k, v in params.items()} for m, params in weights.items()}
            return
        for m, params in weights.items():
            for k, v in params.items():
                self.mean[m][k] += (np.asarray(v, dtype=np.float64) - self.mean[m][k]) / self.count

    def weights(self, like: dict) -> dict:
        """The mean, cast back to each parameter's own dtype (float32 for the policy)."""
        assert self.mean is not None, "no iteration was averaged"
        return {m: type(params)((k, self.mean[m][k].astype(np.asarray(v).dtype)) for k, v in params.items())
                for m, params in like.items()}
