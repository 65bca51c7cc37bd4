"""The BaRP policy pi(a | x, w) as an RLlib RLModule.

h(x) is the frozen MiniLM embedding (computed once, outside the module); phi(w) is a small
MLP over the preference; the decision head reads [h(x); phi(w)] and emits K logits. Training
adds a baseline head b(x, w) that only the learner uses (inference_only drops it), so serving
ships nothing it does not need.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch import TorchRLModule

BASELINE = "baseline"


def mlp(sizes: list[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BaRPRLModule(TorchRLModule):
    """model_config: preference_hidden (list[int]), head_hidden (list[int]), learned_baseline (bool),
    critic (bool: the training-only head predicts every model's reward, Q(x, w, .), instead of one
    baseline value; the loss then uses it as a doubly robust critic)."""

    def setup(self) -> None:
        cfg = self.model_config or {}
        emb_dim = self.observation_space["embedding"].shape[0]
        pref_hidden = list(cfg.get("preference_hidden", [32]))
        head_hidden = list(cfg.get("head_hidden", [256, 128]))
        k = int(self.action_space.n)
        self.preference_net = mlp([2, *pref_hidden], final_activation=True)
        self.decision_head = mlp([emb_dim + pref_hidden[-1], *head_hidden, k], final_activation=False)
        self.baseline_head: nn.Module | None = None
        self.critic = bool(cfg.get("critic", False))
        if (cfg.get("learned_baseline", True) or self.critic) and not self.inference_only:
            out = k if self.critic else 1
            self.baseline_head = mlp([emb_dim + pref_hidden[-1], *head_hidden[-1:], out], final_activation=False)

    def _features(self, batch: dict[str, Any]) -> torch.Tensor:
        obs = batch[Columns.OBS]
        return torch.cat([obs["embedding"], self.preference_net(obs["preference"])], dim=-1)

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.decision_head(self._features(batch))}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        z = self._features(batch)
        out = {Columns.ACTION_DIST_INPUTS: self.decision_head(z)}
        if self.baseline_head is not None:
            b = self.baseline_head(z)
            out[BASELINE] = b if self.critic else b.squeeze(-1)
        return out

    def get_non_inference_attributes(self) -> list[str]:
        return ["baseline_head"]

    @torch.no_grad()
    def action_probabilities(self, embedding: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
        """Softmax over models for a batch; the one call serving and evaluation need."""
        logits = self._forward({Columns.OBS: {"embedding": embedding, "preference": preference}})
        return torch.softmax(logits[Columns.ACTION_DIST_INPUTS], dim=-1)
