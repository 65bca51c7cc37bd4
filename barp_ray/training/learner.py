"""REINFORCE with an entropy bonus and a baseline: the BaRP paper's loss, on RLlib's Learner API.

Per round t (one-step episodes, so the return is the reward):
    A_t   = r_t - b(x_t, w_t)                      (baseline: learned head, batch mean, or none)
    rho_t = min(pi(a_t|s_t) / mu(a_t|s_t), c)      (only for logged/served data: mu is the
                                                    behaviour policy that chose a_t)
    L     = -mean(rho_t * A_t * log pi(a_t|s_t)) - beta * mean(H(pi(.|s_t))) + lambda * mean((b - r)^2)

With `baseline="critic"` the training-only head predicts every model's reward Q(x, w, .), fitted
on the chosen model's reward alone (still bandit feedback), and the policy term becomes the doubly
robust gradient: the critic's full expectation sum_a pi(a) Q(a) plus the importance-weighted
correction rho_t * (r_t - Q(a_t)) * log pi(a_t). Every model's logit then moves on every round,
not only the one that was tried, which is what lets a confident policy change its mind from a
few thousand live rewards.

`barp_loss` is a plain function so the continuous trainer (serving feedback) optimises exactly
the same objective as RLlib training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.typing import ModuleID, TensorType

from barp_ray.rl_module import ALLOWED, BASELINE, CRITIC_QUALITY, CRITIC_TARGET, MEMBER_OUTPUTS, MEMBER_ROWS

# Optional batch columns of continuous training's checkpoint anchor (`serve/checkpoint_anchor.py`):
# [B, K] the checkpoint's distribution and [B] each row's weight of the pull toward it.
ANCHOR_PROBS = "anchor_probs"
ANCHOR_WEIGHT = "anchor_weight"

# The logit given to a model a decision could not choose: finite, so excluded terms are exact
# zeros (p = 0 times a finite log p), never NaN.
EXCLUDED = -1e9


@dataclass(frozen=True)
class LossSettings:
    entropy_coeff: float = 0.05
    baseline: str = "learned"  # learned | mean | none | critic
    baseline_coeff: float = 0.5
    normalize_advantages: bool = True
    importance_weight_clip: float = 0.0  # > 0: clip pi/mu at this value; 0: on-policy, no weights
    critic_kl_coeff: float = 0.0  # critic only: pull pi toward softmax(Q / critic_temperature)
    critic_temperature: float = 0.1
    advantage_scale: str = "batch"  # normalise by the batch's std | "preference": per w_q band's std
    entropy_floor: float = 0.0  # > 0: hinge penalty on each w_q band's mean entropy below this (nats)
    critic_shrinkage: float = 1.0  # < 1: the policy reads the critic's per-prompt quality pulled toward each model's batch mean
    critic_shrinkage_gate: str = "none"  # "cost": the pull is scaled by w_c, so none at w_q = 1
    correction_coeff: float = 1.0  # critic only: weight of the doubly robust correction (1: unbiased)


PREFERENCE_BANDS = 5


def _band_means(values: torch.Tensor, preference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's w_q band, and per band the row count and the mean of `values`."""
    band = torch.clamp((preference[:, 0] * PREFERENCE_BANDS).long(), 0, PREFERENCE_BANDS - 1)
    count = torch.zeros(PREFERENCE_BANDS, device=values.device).index_add(0, band, torch.ones_like(values))
    mean = torch.zeros_like(count).index_add(0, band, values) / count.clamp(min=1)
    return band, count, mean


def advantage_scale(values: torch.Tensor, preference: torch.Tensor | None, settings: LossSettings) -> torch.Tensor:
    """What advantages are divided by: the batch's std, or (`advantage_scale: preference`) each
    row's w_q band's std, so rounds at a preference whose rewards vary little (the cost end) move
    the policy as much as rounds where they vary a lot. A band's std is floored at a quarter of
    the batch's: a band with a few near-equal rewards must not blow its rows' steps up."""
    batch = values.std() + 1e-6
    if settings.advantage_scale != "preference" or preference is None:
        return batch
    band, count, mean = _band_means(values, preference)
    var = torch.zeros_like(count).index_add(0, band, (values - mean[band]) ** 2) / (count - 1).clamp(min=1)
    return torch.maximum(var.sqrt(), 0.25 * batch)[band] + 1e-6


def band_entropy_shortfall(row_entropy: torch.Tensor, preference: torch.Tensor, floor: float) -> torch.Tensor:
    """Mean over the w_q bands present of relu(floor - the band's mean entropy). One entropy bonus
    for the whole batch lets the policy go deterministic at the preferences where that pays most
    and stay spread elsewhere; a floor per band keeps every preference exploring a little, whatever
    the others do, and costs nothing in a band above it."""
    _, count, mean = _band_means(row_entropy, preference)
    return torch.relu(floor - mean[count > 0]).mean()


def shrink_quality(q_all: torch.Tensor, quality: torch.Tensor | None, preference: torch.Tensor | None,
                   keep: float, gate: str = "none") -> torch.Tensor:
    """Q with w_q * (q(x, a) - mean_x q(., a)) scaled by `keep`. A critic fitted on bandit rewards
    is noisiest on the models the policy seldom tries, and at low w_q a noisy "this prompt needs a
    better model" moves a prompt off the cheap default for a quality gain smaller than the price.
    Shrinking each prompt's deviation from the model's mean quality (what kNN's averaging does)
    asks for more evidence before leaving it. The shrunk Q enters the direct term and the KL target
    while the correction keeps the critic's own Q(a_t), so the gradient is deliberately biased
    toward the per-model means: a prior, not a variance trick.

    With `gate="cost"` the share pulled away is (1 - keep) * w_c: the prior only matters where a
    quality gain is traded against a certain price, and at w_q = 1 (nothing to pay) an even
    shrinkage cost the most reward on validation, so there it is off."""
    if quality is None or preference is None:
        raise ValueError("critic_shrinkage < 1 needs a reward-shaped critic (critic_form reward or known_cost)")
    quality = quality.detach()
    pulled = (1.0 - keep) * (preference[:, 1:2] if gate == "cost" else 1.0)
    return q_all - pulled * preference[:, :1] * (quality - quality.mean(0, keepdim=True))


def barp_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    settings: LossSettings,
    baseline: torch.Tensor | None = None,
    behaviour_logp: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    preference: torch.Tensor | None = None,
    critic_quality: torch.Tensor | None = None,
    critic_target: torch.Tensor | None = None,
    anchor_probs: torch.Tensor | None = None,
    anchor_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`allowed` ([B, K], nonzero = could be chosen): the models each logged decision chose among
    (a request's `candidates`). pi is then the softmax over those, the distribution its logged
    propensity mu came from, so pi/mu compares like with like; excluded models get no gradient.

    `anchor_probs` / `anchor_weight` ([B, K] / [B]): a cross-entropy toward another policy's
    distribution on each row, weighted per row (continuous training's pull toward the checkpoint)."""
    if allowed is not None:
        allowed = allowed.bool()
        logits = logits.masked_fill(~allowed, EXCLUDED)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    row_entropy = -(logp_all.exp() * logp_all).sum(-1)
    entropy = row_entropy.mean()
    rewards = rewards.float()

    if behaviour_logp is not None and settings.importance_weight_clip > 0:
        rho = torch.exp(logp.detach() - behaviour_logp.float()).clamp(max=settings.importance_weight_clip)
    else:
        rho = torch.ones_like(logp)

    baseline_loss = torch.zeros((), device=rewards.device)
    direct = torch.zeros((), device=rewards.device)
    if settings.baseline == "critic":
        if baseline is None or baseline.dim() != 2:
            raise ValueError("baseline='critic' needs the module's per-model critic output [B, K]")
        q_all = (baseline if critic_target is None else critic_target).detach()
        if settings.critic_shrinkage < 1.0:
            q_all = shrink_quality(q_all, critic_quality, preference, settings.critic_shrinkage,
                                   settings.critic_shrinkage_gate)
        q_taken = baseline.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        baseline_loss = torch.mean((q_taken - rewards) ** 2)
        probs = logp_all.exp()
        value = (probs.detach() * q_all).sum(-1, keepdim=True)
        # Each training prompt comes back hundreds of times, so the correction's average over its
        # visits is that prompt's own observed outcomes. Below 1 the policy leans on the critic, a
        # smoother function of the prompt, instead; on validation every weight below 1 lost.
        advantage = settings.correction_coeff * (rewards - q_taken.detach())
        scale = advantage_scale(rewards, preference, settings) if settings.normalize_advantages and rewards.numel() > 1 else 1.0
        advantage = advantage / scale
        direct = -torch.mean((probs * (q_all - value)).sum(-1) / scale)
        if settings.critic_kl_coeff > 0:
            # The policy-gradient terms vanish with pi(a) on a model the policy has all but ruled
            # out; this KL's gradient (pi - target) does not, so a learned-better model is adopted.
            scores = q_all / settings.critic_temperature
            target = torch.softmax(scores if allowed is None else scores.masked_fill(~allowed, EXCLUDED), dim=-1)
            direct = direct - settings.critic_kl_coeff * torch.mean((target * logp_all).sum(-1))
    elif settings.baseline == "learned":
        if baseline is None:
            raise ValueError("baseline='learned' needs the module's baseline head output")
        advantage = rewards - baseline.detach()
        baseline_loss = torch.mean((baseline - rewards) ** 2)
    elif settings.baseline == "mean":
        advantage = rewards - rewards.mean()
    else:
        advantage = rewards
    if settings.baseline != "critic" and settings.normalize_advantages and advantage.numel() > 1:
        # Rewards at w_q~1 and w_q~0 differ in scale; unit-variance advantages keep the step size steady.
        advantage = advantage / advantage_scale(advantage, preference, settings)

    policy_loss = -torch.mean(rho * advantage * logp) + direct
    loss = policy_loss - settings.entropy_coeff * entropy + settings.baseline_coeff * baseline_loss
    if settings.entropy_floor > 0 and preference is not None:
        loss = loss + band_entropy_shortfall(row_entropy, preference, settings.entropy_floor)
    if anchor_probs is not None and anchor_weight is not None:
        target = anchor_probs.float() if allowed is None else anchor_probs.float() * allowed
        target = target / target.sum(-1, keepdim=True).clamp(min=1e-12)
        loss = loss - torch.mean(anchor_weight.float() * (target * logp_all).sum(-1))
    stats = {
        "policy_loss": policy_loss.detach(),
        "entropy": entropy.detach(),
        "baseline_loss": baseline_loss.detach(),
        "reward_mean": rewards.mean().detach(),
        "importance_weight_mean": rho.mean().detach(),
    }
    return loss, stats


def settings_from(config: Any, entropy_coeff: float | None = None) -> LossSettings:
    """`entropy_coeff`: today's value of a scheduled bonus (config.entropy_coeff is then the schedule)."""
    return LossSettings(
        entropy_coeff=config.entropy_coeff if entropy_coeff is None else entropy_coeff,
        baseline=config.baseline,
        baseline_coeff=config.baseline_coeff,
        normalize_advantages=config.normalize_advantages,
        importance_weight_clip=config.importance_weight_clip,
        critic_kl_coeff=config.critic_kl_coeff,
        critic_temperature=config.critic_temperature,
        advantage_scale=config.advantage_scale,
        entropy_floor=config.entropy_floor,
        critic_shrinkage=config.critic_shrinkage,
        critic_shrinkage_gate=config.critic_shrinkage_gate,
        correction_coeff=config.correction_coeff,
    )


class BaRPTorchLearner(TorchLearner):
    def build(self) -> None:
        """RLlib's Scheduler for the entropy bonus, as PPO's learner keeps one: a float stays fixed,
        [[t, value], ...] interpolates over sampled rounds (`training.entropy_coeff_final`)."""
        super().build()
        from ray.rllib.utils.schedules.scheduler import Scheduler

        self._entropy = {mid: Scheduler(self.config.get_config_for_module(mid).entropy_coeff, framework="torch")
                         for mid in self.module.keys()}

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

        for scheduler in self._entropy.values():
            scheduler.update(timestep=timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))

    def configure_optimizers_for_module(self, module_id: ModuleID, config: Any = None) -> None:
        """Adam, as RLlib's default, or AdamW when `weight_decay` > 0: the policy and the critic
        fit the train prompts (longer training routes new prompts worse), and decay is the
        cheapest brake on that."""
        decay = float(getattr(config, "weight_decay", 0.0) or 0.0)
        if decay <= 0:
            return super().configure_optimizers_for_module(module_id, config)
        params = self.get_parameters(self._module[module_id])
        self.register_optimizer(module_id=module_id, optimizer=torch.optim.AdamW(params, weight_decay=decay),
                                params=params, lr_or_lr_schedule=config.lr)

    def compute_loss_for_module(
        self, *, module_id: ModuleID, config: Any, batch: dict[str, Any], fwd_out: dict[str, TensorType]
    ) -> TensorType:
        settings = settings_from(config, float(self._entropy[module_id].get_current_value()))
        # An ensemble: each member's own loss, on its own rounds (member_data "own") or on all of them.
        members = fwd_out.get(MEMBER_OUTPUTS, [fwd_out])
        losses = []
        for out, rows in zip(members, fwd_out.get(MEMBER_ROWS, [None] * len(members))):
            take = (lambda t: t) if rows is None else (lambda t: None if t is None else t[rows])
            losses.append(barp_loss(
                out[Columns.ACTION_DIST_INPUTS],
                take(batch[Columns.ACTIONS]),
                take(batch[Columns.REWARDS]),
                settings,
                baseline=out.get(BASELINE),
                behaviour_logp=take(batch.get(Columns.ACTION_LOGP)),
                allowed=take(batch[Columns.OBS].get(ALLOWED)),
                preference=take(batch[Columns.OBS]["preference"]),
                critic_quality=out.get(CRITIC_QUALITY),
                critic_target=out.get(CRITIC_TARGET),
                anchor_probs=take(batch.get(ANCHOR_PROBS)),
                anchor_weight=take(batch.get(ANCHOR_WEIGHT)),
            ))
        loss = torch.stack([x for x, _ in losses]).sum()
        stats = {k: torch.stack([st[k] for _, st in losses]).mean() for k in losses[0][1]}
        self.metrics.log_dict(stats, key=module_id, window=1)
        return loss
