"""The loss's critic variant: what each term does to a policy that is confidently wrong."""
from __future__ import annotations

import torch

from barp_ray.learner import LossSettings, barp_loss


def _logit_grad(settings: LossSettings) -> torch.Tensor:
    """Gradient on the logits of a policy sure of model 0 (p ~ 0.99) when the critic knows model 2 is best."""
    logits = torch.tensor([[6.0, 0.0, 0.0, 0.0]] * 64, requires_grad=True)
    critic = torch.tensor([[0.3, 0.2, 0.9, 0.1]] * 64, requires_grad=True)
    actions = torch.zeros(64, dtype=torch.long)  # the confident policy keeps trying model 0
    rewards = torch.full((64,), 0.3) + 0.05 * torch.randn(64, generator=torch.Generator().manual_seed(0))
    loss, _ = barp_loss(logits, actions, rewards, settings, baseline=critic)
    loss.backward()
    return logits.grad.sum(0)


def test_critic_kl_moves_a_confident_policy_toward_the_better_model():
    plain = _logit_grad(LossSettings(baseline="critic", entropy_coeff=0.0))
    pulled = _logit_grad(LossSettings(baseline="critic", entropy_coeff=0.0, critic_kl_coeff=1.0))
    # descent direction = -grad: model 2's logit must rise, model 0's fall
    assert -pulled[2] > 0 and -pulled[0] < 0
    # the policy-gradient terms carry pi(2) ~ 0.0025; the KL's (pi - target) does not
    assert -pulled[2] > 20 * max(-plain[2].item(), 1e-9)


def test_critic_is_fitted_on_the_chosen_model_only():
    logits = torch.zeros(8, 3, requires_grad=True)
    critic = torch.zeros(8, 3, requires_grad=True)
    loss, stats = barp_loss(logits, torch.ones(8, dtype=torch.long), torch.ones(8), LossSettings(baseline="critic"),
                            baseline=critic)
    loss.backward()
    assert critic.grad[:, 1].abs().sum() > 0
    assert critic.grad[:, [0, 2]].abs().sum() == 0  # bandit feedback: no target for models not tried
    assert stats["baseline_loss"] > 0
