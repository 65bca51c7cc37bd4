"""An opt-in pull of continuous training toward the checkpoint it started from (`trainer.anchor_weight`).

Why: on tasks it never saw, a freshly served checkpoint first gets *worse* for a few hundred
rewards before feedback makes it better (bench/live_unseen_tasks.py: one of three task-held-out
folds falls 0.011 below its start at 250 rewards, docs/results/live_unseen_tasks). Among near-tied
models, 250 rewards spread over every preference and nine models are thin evidence, and each update
moves the policy as if they were many. A prior on the checkpoint holds that, but every prior on the
checkpoint also slows the repair of a checkpoint that is confidently wrong (the synthetic world of
bench/live_loop.py). So this one fades and is dropped on evidence:

- the learner's loss gets lambda * m / (m + n) * CE(checkpoint's distribution, pi), n the rewards
  trained since the start (replicas still serve what learns, so the learner keeps on-policy data);
- it is dropped for good once the live critic's greedy choice beats the checkpoint's distribution by
  `anchor_gate_z` standard errors, doubly robustly, on rewards judged *before* the critic trained
  on them (prequential). Judged on the replay window instead, the critic grades its own fit and the
  gate opened on the first fold at z = 8 (the winner's curse);
- a forget (a changed world), a new model set or an operator's checkpoint end it: then the
  checkpoint is no prior.

When the pull ends, the trainer restarts Adam's moments: the pull's gradients had filled them, and
the steps long after it ended stayed small.

Off by default. On three task-held-out folds (12 seeds each) it takes the early dip out of the mean
curve at a tie over 4,000 rewards; where the checkpoint is confidently wrong (bench/live_loop.py, 16
seeds) it closes 0.67 of the new world's gap over the first 1,000 rounds against 0.76
(docs/results/live_unseen_tasks/README.md, session 47).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from serve.exploration import dr_terms

# pi / mu is clipped here in the gate's doubly robust differences: mu >= epsilon / K keeps it
# bounded anyway, and a greedy policy's weight is 0 or 1 / mu.
GATE_WEIGHT_CLIP = 10.0


class CheckpointAnchor:
    def __init__(self, module, weight: float, fade: float, gate_z: float, gate_min: int) -> None:
        """`module`: a frozen copy of the learner's module as the service started (eval mode); None
        when the anchor is off (weight 0)."""
        self.module, self.weight, self.fade = module, weight, fade
        self.gate_z, self.gate_min = gate_z, gate_min
        self.active = weight > 0
        self.ended: str | None = None if self.active else "off"
        self.judged, self.total, self.total_sq = 0, 0.0, 0.0

    def coefficient(self, rewards_trained: int) -> float:
        return self.weight * self.fade / (self.fade + rewards_trained) if self.active else 0.0

    @torch.no_grad()
    def probs(self, obs: dict[str, torch.Tensor]) -> np.ndarray:
        """[B, K] the checkpoint's training distribution (the loss's forward, without dropout)."""
        from ray.rllib.core.columns import Columns

        logits = self.module._forward_train({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        return torch.softmax(logits, dim=-1).numpy()

    def judge(self, obs: dict[str, torch.Tensor], actions: np.ndarray, logged: np.ndarray, rewards: np.ndarray,
              q: np.ndarray, allowed: np.ndarray) -> None:
        """Add new rewards' doubly robust (critic's greedy choice - checkpoint) differences; `q` must
        come from a critic that has not trained on them. Ends the anchor once their running mean is
        `gate_z` standard errors above 0 over at least `gate_min` rewards."""
        if not self.active or len(actions) == 0:
            return
        rows = np.arange(len(actions))
        q = np.where(allowed, q, -np.inf)
        greedy = np.zeros_like(q)
        greedy[rows, q.argmax(1)] = 1.0
        anchor = np.where(allowed, self.probs(obs), 0.0)
        anchor = anchor / anchor.sum(1, keepdims=True).clip(min=1e-12)
        q = np.where(allowed, q, 0.0)
        ones = np.ones(len(actions))
        d = (dr_terms(greedy, q, actions, logged, rewards, ones, self_normalise=False, weight_clip=GATE_WEIGHT_CLIP)
             - dr_terms(anchor, q, actions, logged, rewards, ones, self_normalise=False, weight_clip=GATE_WEIGHT_CLIP))
        self.judged += len(d)
        self.total += float(d.sum())
        self.total_sq += float((d**2).sum())
        gain, se = self.evidence()
        if self.judged >= self.gate_min and gain - self.gate_z * se > 0:
            self.end("evidence")

    def evidence(self) -> tuple[float, float]:
        """(mean difference, its standard error) over every reward judged so far."""
        if self.judged == 0:
            return 0.0, math.inf
        mean = self.total / self.judged
        if self.judged < 2:
            return mean, math.inf
        var = max(self.total_sq - self.judged * mean**2, 0.0) / (self.judged - 1)
        return mean, math.sqrt(var / self.judged)

    def end(self, reason: str) -> bool:
        """True if this ended a pull that was on (the caller then restarts the optimizer's moments)."""
        if not self.active:
            return False
        self.active, self.ended = False, reason
        return True

    def state(self) -> dict[str, Any]:
        return {"active": self.active, "ended": self.ended, "judged": self.judged, "total": self.total,
                "total_sq": self.total_sq}

    def restore(self, state: dict[str, Any] | None) -> None:
        if not state or self.weight <= 0:
            return
        self.active, self.ended = bool(state["active"]), state.get("ended")
        self.judged, self.total, self.total_sq = int(state["judged"]), float(state["total"]), float(state["total_sq"])

    def status(self, rewards_trained: int) -> dict[str, Any]:
        gain, se = self.evidence()
        return {"active": self.active, "ended": self.ended, "coefficient": self.coefficient(rewards_trained),
                "judged": self.judged, "gain": gain if self.judged else None, "gain_se": se if math.isfinite(se) else None}
