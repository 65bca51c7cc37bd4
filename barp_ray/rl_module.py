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


CRITIC_FORMS = ("free", "reward")
HEADS = ("concat", "preference_gated", "price_aware")


class BaRPRLModule(TorchRLModule):
    """model_config: preference_hidden (list[int]), head_hidden (list[int]), learned_baseline (bool),
    critic (bool: the training-only head predicts every model's reward, Q(x, w, .), instead of one
    baseline value; the loss then uses it as a doubly robust critic), critic_form, exploration_floor.

    critic_form "reward" builds Q in the reward's own shape, Q(x, w, a) = w_q q(x, a) - w_c c(x, a),
    with q and c read from the prompt alone. Every reward, at whatever w it was earned, then teaches
    the same two numbers per model, so what a model is worth at w_q = 1 is learned from rounds
    played at every preference ("free" learns Q for each w separately and starves the ends).

    exploration_floor eps > 0 makes the rollout distribution (1 - eps) pi + eps / K, so no model's
    chance of being tried dies out; the learner corrects with pi / mu (ACTION_LOGP holds log mu).
    Serving and evaluation read `_forward`, the policy itself.

    head "preference_gated" reads the same [h(x); phi(w)] but emits two logits per model, U and V,
    and scores w_q U + w_c V: the reward is linear in w for every model, so the best model's
    logit can be too, and the ends of the simplex get their own halves of the head instead of
    sharing one through a 32-unit phi(w).

    head "price_aware" is the concat head plus a term that reads each model's price now:
    logit_a -= w_c * softplus(alpha) * log(price_a), alpha learned. The concat head's last layer
    already gives every model a learned vector (what it is good at); the price term keeps what it
    costs out of the weights, so a price change in the serving config moves the routing at once,
    in the right direction (at w_c > 0 a dearer model never gains share), with no training step.
    model_config["model_prices"] is the blended $/Mtok (input + output) per model at training.
    """

    def setup(self) -> None:
        cfg = self.model_config or {}
        emb_dim = self.observation_space["embedding"].shape[0]
        pref_hidden = list(cfg.get("preference_hidden", [32]))
        head_hidden = list(cfg.get("head_hidden", [256, 128]))
        k = int(self.action_space.n)
        self.preference_net = mlp([2, *pref_hidden], final_activation=True)
        self.head = str(cfg.get("head", "concat"))
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        out = 2 * k if self.head == "preference_gated" else k
        self.decision_head = mlp([emb_dim + pref_hidden[-1], *head_hidden, out], final_activation=False)
        self.baseline_head: nn.Module | None = None
        self.critic = bool(cfg.get("critic", False))
        self.critic_form = str(cfg.get("critic_form", "free"))
        if self.critic_form not in CRITIC_FORMS:
            raise ValueError(f"critic_form must be one of {CRITIC_FORMS}, got {self.critic_form!r}")
        self.exploration_floor = float(cfg.get("exploration_floor", 0.0))
        if self.head == "price_aware":
            prices = cfg.get("model_prices")
            if prices is None or len(prices) != k or not all(float(x) > 0 for x in prices):
                raise ValueError(f"head 'price_aware' needs model_prices: {k} positive prices, got {prices!r}")
            # Not in the state dict: published weights must not carry prices back over the served ones.
            self.register_buffer("log_price", torch.log(torch.as_tensor(prices, dtype=torch.float32)), persistent=False)
            self.price_scale = nn.Parameter(torch.tensor(0.5413))  # softplus(0.5413) = 1
        if (cfg.get("learned_baseline", True) or self.critic) and not self.inference_only:
            if self.critic and self.critic_form == "reward":
                self.baseline_head = mlp([emb_dim, *head_hidden[-1:], 2 * k], final_activation=False)
            else:
                out = k if self.critic else 1
                self.baseline_head = mlp([emb_dim + pref_hidden[-1], *head_hidden[-1:], out], final_activation=False)

    def _features(self, batch: dict[str, Any]) -> torch.Tensor:
        obs = batch[Columns.OBS]
        return torch.cat([obs["embedding"], self.preference_net(obs["preference"])], dim=-1)

    def _logits(self, batch: dict[str, Any], z: torch.Tensor) -> torch.Tensor:
        out = self.decision_head(z)
        if self.head == "concat":
            return out
        w = batch[Columns.OBS]["preference"]
        if self.head == "price_aware":
            return out - w[:, 1:] * nn.functional.softplus(self.price_scale) * self.log_price
        u, v = out.chunk(2, dim=-1)
        return w[:, :1] * u + w[:, 1:] * v

    def set_prices(self, prices: list[float]) -> None:
        """Today's blended $/Mtok per model (price_aware head): routing follows at once."""
        if self.head != "price_aware":
            raise ValueError(f"head {self.head!r} does not read prices; train with policy.head: price_aware")
        if len(prices) != self.log_price.numel() or not all(float(x) > 0 for x in prices):
            raise ValueError(f"prices: need {self.log_price.numel()} positive numbers, got {prices!r}")
        self.log_price = torch.log(torch.as_tensor(prices, dtype=torch.float32))

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self._logits(batch, self._features(batch))}

    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        logits = self._forward(batch)[Columns.ACTION_DIST_INPUTS]
        if self.exploration_floor <= 0:
            return {Columns.ACTION_DIST_INPUTS: logits}
        k = logits.shape[-1]
        mixed = (1.0 - self.exploration_floor) * torch.softmax(logits, dim=-1) + self.exploration_floor / k
        return {Columns.ACTION_DIST_INPUTS: torch.log(mixed)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        z = self._features(batch)
        out = {Columns.ACTION_DIST_INPUTS: self._logits(batch, z)}
        if self.baseline_head is None:
            return out
        if self.critic and self.critic_form == "reward":
            obs = batch[Columns.OBS]
            quality, cost = self.baseline_head(obs["embedding"]).chunk(2, dim=-1)
            w = obs["preference"]
            out[BASELINE] = w[:, :1] * quality - w[:, 1:] * cost
        else:
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
