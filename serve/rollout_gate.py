"""Safe rollout: whether a trained candidate may replace the weights replicas serve.

The candidate is refused if its off-policy estimate (served as the exploring policy) on the newest
held-back rewards is worse than that of the serving weights, or of any of the `rollout.references`
most recently published versions, by more than `rollout.margin` with one-sided
`rollout.confidence` (paired over the held-back records). Against the serving weights alone, a bad
first candidate that was not yet clearly worse got published, and every later one was then
compared with it: small, individually insignificant steps could drift anywhere (CI: six poisoned
candidates published in a row). The default estimator is doubly robust with the learner's own
critic, which never sees held-back records; self-normalised IPS alone (`rollout.estimator: snips`)
has too few held-back records on a newly best model and refused adaptation for hundreds of rounds
after a shift in the in-process loop. Held-back rewards are weighted by recency
(`rollout.half_life`): on evenly weighted old data, a candidate that has learned a changed world
looks worse than the weights that fit the old one, and the gate would hold adaptation back
(measured: 750 rounds of refusals after a shift with 512 equally weighted records).
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from serve.exploration import dr_terms, dr_value, exploring_distribution, recency_weights, snips_value, weighted_mean_se
from serve.settings import ExplorationSettings, RolloutSettings


@dataclass
class HeldBack:
    """Held-back records as the gate reads them, oldest first: the observation columns the
    policy takes, the served model, its logged propensity, the reward, and the critic's [B, K] values."""

    obs: dict[str, torch.Tensor]
    actions: np.ndarray
    logged: np.ndarray
    rewards: np.ndarray
    q: np.ndarray


class RolloutGate:
    def __init__(self, rollout: RolloutSettings, exploration: ExplorationSettings) -> None:
        self.rollout, self.exploration = rollout, exploration

    def served_distribution(self, module, obs: dict[str, torch.Tensor], epsilon: float) -> np.ndarray:
        """[B, K] what replicas serving `module` would draw from."""
        from barp_ray.rl_module import ALLOWED, LOG_PRICE

        probs = module.action_probabilities(obs["embedding"], obs["preference"], obs.get(LOG_PRICE)).numpy()
        return exploring_distribution(probs, epsilon, self.exploration.temperature, obs[ALLOWED].numpy() > 0)

    def served_values(self, module, held: HeldBack, epsilon: float, recency: np.ndarray) -> tuple[float, np.ndarray]:
        """`module` served as the exploring policy: the configured estimate of its mean reward on
        the held-back records (weighted by `recency`), and per-record (unnormalised) values for the paired test."""
        mu = self.served_distribution(module, held.obs, epsilon)
        q = held.q
        if self.rollout.estimator == "snips":
            q = np.zeros_like(q)
            value = snips_value(mu, held.actions, held.logged, held.rewards, recency)
        else:
            value = dr_value(mu, q, held.actions, held.logged, held.rewards, recency,
                             self_normalise=self.rollout.estimator == "sndr")
        return value, dr_terms(mu, q, held.actions, held.logged, held.rewards, recency,
                               self_normalise=self.rollout.estimator != "dr")

    def judge(self, candidate, references: list[tuple[int, Any]], held: HeldBack, epsilon: float) -> dict[str, Any]:
        """{"publish": bool, "estimate": {...}}: the candidate against each (version, module) reference,
        the serving weights last.

        Why a one-sided test and not the point estimates: right after the world changes, the
        held-back records are few and mostly logged by the serving weights, so the candidate's
        estimate is noisy; comparing point estimates refused an adapting candidate for 44 updates
        in a row (CI, after a shift) and left the service on weights that no longer fit. The
        gate is there to stop a candidate that is clearly worse (poisoned or inconsistent
        feedback), which the test still does; noise alone no longer holds learning back."""
        recency = recency_weights(len(held.actions), self.rollout.half_life)
        z = NormalDist().inv_cdf(self.rollout.confidence)
        value_of_candidate, candidate_terms = self.served_values(candidate, held, epsilon, recency)
        # Each yardstick: (slack, version, estimate, se); the candidate passes if every slack >= 0.
        checks = []
        for version, module in references:
            value, terms = self.served_values(module, held, epsilon, recency)
            se = weighted_mean_se(candidate_terms - terms, recency)
            checks.append((value_of_candidate - value + z * se + self.rollout.margin, version, value, se))
        slack, against, value, se = min(checks, key=lambda c: c[0])
        serving = checks[-1]
        estimate = {"candidate": value_of_candidate, "serving": serving[2], "difference_se": serving[3],
                    "against": {"version": against, "estimate": value, "difference_se": se},
                    "n": len(held.actions), "margin": self.rollout.margin, "confidence": self.rollout.confidence,
                    "estimator": self.rollout.estimator}
        return {"publish": slack >= 0, "estimate": estimate}
