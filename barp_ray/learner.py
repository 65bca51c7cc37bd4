"""REINFORCE with an entropy bonus and a baseline: the BaRP paper's loss, on RLlib's Learner API.

Per round t (one-step episodes, so the return is the reward):
    A_t   = r_t - b(x_t, w_t)                      (baseline: learned head, batch mean, or none)
    rho_t = min(pi(a_t|s_t) / mu(a_t|s_t), c)      (only when the batch carries the behaviour
                                                    policy's log-prob: logged/served data)
    L     = -mean(rho_t * A_t * log pi(a_t|s_t)) - beta * mean(H(pi(.|s_t))) + lambda * mean((b - r)^2)
"""
from __future__ import annotations

from typing import Any

import torch

from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.typing import ModuleID, TensorType

from barp_ray.rl_module import BASELINE


class BaRPTorchLearner(TorchLearner):
    def compute_loss_for_module(
        self, *, module_id: ModuleID, config: Any, batch: dict[str, Any], fwd_out: dict[str, TensorType]
    ) -> TensorType:
        logp_all = torch.log_softmax(fwd_out[Columns.ACTION_DIST_INPUTS], dim=-1)
        actions = batch[Columns.ACTIONS].long()
        logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        rewards = batch[Columns.REWARDS].float()

        baseline_loss = torch.zeros((), device=rewards.device)
        if config.baseline == "learned":
            b = fwd_out[BASELINE]
            advantage = rewards - b.detach()
            baseline_loss = torch.mean((b - rewards) ** 2)
        elif config.baseline == "mean":
            advantage = rewards - rewards.mean()
        else:
            advantage = rewards

        if config.normalize_advantages:
            # Rewards at w_q~1 and w_q~0 differ in scale; unit-variance advantages keep the step size steady.
            advantage = advantage / (advantage.std() + 1e-6)

        if Columns.ACTION_LOGP in batch and config.importance_weight_clip > 0:
            rho = torch.exp(logp.detach() - batch[Columns.ACTION_LOGP].float()).clamp(max=config.importance_weight_clip)
        else:
            rho = torch.ones_like(logp)

        policy_loss = -torch.mean(rho * advantage * logp)
        entropy_mean = entropy.mean()
        loss = policy_loss - config.entropy_coeff * entropy_mean + config.baseline_coeff * baseline_loss

        self.metrics.log_dict(
            {
                "policy_loss": policy_loss,
                "entropy": entropy_mean,
                "baseline_loss": baseline_loss,
                "reward_mean": rewards.mean(),
                "importance_weight_mean": rho.mean(),
            },
            key=module_id,
            window=1,
        )
        return loss
