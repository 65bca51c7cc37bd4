"""The loss's critic variant: what each term does to a policy that is confidently wrong."""
from __future__ import annotations

import pytest
import torch

from barp_ray.training.learner import LossSettings, barp_loss


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


def test_critic_target_steers_the_policy_and_the_regression_fits_the_baseline():
    """Given a critic_target (critic_dropout's whole-net Q), the policy is pulled toward it, not toward
    the dropped-out Q the regression fits; the regression's loss and gradient are the baseline's."""
    settings = LossSettings(baseline="critic", entropy_coeff=0.0, critic_kl_coeff=1.0)
    grads = []
    for target in (None, torch.tensor([[0.0, 0.0, 1.0]]).expand(8, 3)):
        logits = torch.zeros(8, 3, requires_grad=True)
        critic = torch.zeros(8, 3, requires_grad=True)
        loss, stats = barp_loss(logits, torch.zeros(8, dtype=torch.long), torch.full((8,), 0.5), settings,
                                baseline=critic, critic_target=target)
        loss.backward()
        grads.append((logits.grad.sum(0), critic.grad.clone(), stats["baseline_loss"]))
    (plain_logits, plain_critic, plain_loss), (steered_logits, steered_critic, steered_loss) = grads
    assert -steered_logits[2] > 0 and -steered_logits[2] > -plain_logits[2] + 0.5  # model 2's logit rises
    assert torch.equal(plain_critic, steered_critic) and torch.equal(plain_loss, steered_loss)


def test_critic_is_fitted_on_the_chosen_model_only():
    logits = torch.zeros(8, 3, requires_grad=True)
    critic = torch.zeros(8, 3, requires_grad=True)
    loss, stats = barp_loss(logits, torch.ones(8, dtype=torch.long), torch.ones(8), LossSettings(baseline="critic"),
                            baseline=critic)
    loss.backward()
    assert critic.grad[:, 1].abs().sum() > 0
    assert critic.grad[:, [0, 2]].abs().sum() == 0  # bandit feedback: no target for models not tried
    assert stats["baseline_loss"] > 0


def test_a_model_the_logged_decision_could_not_choose_gets_no_probability_and_no_gradient():
    """`allowed` (a request's candidates): pi is the softmax over the allowed models, the critic's
    KL target too; the excluded logits get exact zeros, never NaN."""
    logits = torch.randn(16, 4, requires_grad=True)
    critic = torch.tensor([[0.1, 0.2, 0.9, 0.3]] * 16)  # the critic prefers model 2, which half the rows exclude
    allowed = torch.ones(16, 4, dtype=torch.bool)
    allowed[::2, 2] = False
    actions = torch.where(torch.arange(16) % 2 == 0, 1, 2)
    loss, stats = barp_loss(logits, actions, torch.rand(16), LossSettings(baseline="critic", critic_kl_coeff=1.0,
                                                                          importance_weight_clip=2.0),
                            baseline=critic, behaviour_logp=torch.full((16,), -1.0), allowed=allowed)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert logits.grad[::2, 2].abs().sum() == 0 and logits.grad[1::2, 2].abs().sum() > 0


def test_the_checkpoint_anchor_pulls_each_row_by_its_own_weight_toward_the_anchor_within_the_allowed_models():
    """Continuous training's anchor (`anchor_probs`, `anchor_weight`): a row weighted 0 feels nothing of
    it; a weighted row's logits move toward the anchor's distribution, renormalised over the models the
    row allowed (an anchor sure of an excluded model pulls toward the others, never NaN)."""
    settings = LossSettings(baseline="critic", entropy_coeff=0.0, critic_kl_coeff=1.0, normalize_advantages=False)
    critic = torch.tensor([[0.1, 0.9, 0.1]] * 4)  # the critic wants model 1
    anchor = torch.tensor([[0.9, 0.05, 0.05]] * 3 + [[0.0, 0.1, 0.9]])  # the checkpoint wanted model 0 (row 3: model 2)
    allowed = torch.ones(4, 3, dtype=torch.bool)
    allowed[3, 2] = False
    grads = []
    for weight in (None, torch.tensor([0.0, 3.0, 3.0, 3.0])):
        logits = torch.zeros(4, 3, requires_grad=True)
        loss, _ = barp_loss(logits, torch.ones(4, dtype=torch.long), torch.full((4,), 0.9), settings, baseline=critic,
                            allowed=allowed, anchor_probs=None if weight is None else anchor, anchor_weight=weight)
        loss.backward()
        grads.append(logits.grad)
    plain, anchored = grads
    assert torch.equal(plain[0], anchored[0])  # weight 0: untouched
    assert -plain[1, 0] < 0 < -anchored[1, 0]  # the critic alone pushes model 0 down; the anchor holds it up
    assert torch.isfinite(anchored).all() and anchored[3, 2] == 0  # the excluded model: no gradient
    # row 3's anchor over its allowed models 0 and 1 is (0, 1): model 1 rises more, model 0 falls more
    assert -anchored[3, 1] > -plain[3, 1] and -anchored[3, 0] < -plain[3, 0]


def test_per_preference_advantage_scale_divides_each_band_by_its_own_spread():
    from barp_ray.training.learner import advantage_scale

    w = torch.tensor([[0.05, 0.95]] * 50 + [[0.95, 0.05]] * 50)
    r = torch.cat([0.01 * torch.randn(50, generator=torch.Generator().manual_seed(0)),
                   torch.randn(50, generator=torch.Generator().manual_seed(1))])
    batch = advantage_scale(r, w, LossSettings())
    per_band = advantage_scale(r, w, LossSettings(advantage_scale="preference"))
    assert batch.dim() == 0 and per_band.shape == (100,)
    assert torch.allclose(per_band[50:], r[50:].std() + 1e-6, rtol=1e-4)  # the wide band: its own std
    assert torch.allclose(per_band[:50], 0.25 * batch + 1e-6)  # the narrow band: floored, not 0.01


def test_entropy_floor_spreads_only_the_band_that_fell_below_it():
    """One band's policy is nearly deterministic, the other's spread: the floor's gradient raises
    the entropy of the first and leaves the second as the plain loss has it."""
    w = torch.tensor([[0.05, 0.95]] * 32 + [[0.95, 0.05]] * 32)
    logits = torch.tensor([[8.0, 0.0, 0.0, 0.0]] * 32 + [[0.1, 0.0, 0.0, 0.0]] * 32)
    actions, rewards = torch.zeros(64, dtype=torch.long), torch.zeros(64)
    grads = []
    for floor in (0.0, 0.5):
        x = logits.clone().requires_grad_(True)
        loss, _ = barp_loss(x, actions, rewards, LossSettings(baseline="none", entropy_coeff=0.0, entropy_floor=floor), preference=w)
        loss.backward()
        grads.append(x.grad)
    extra = grads[1] - grads[0]
    assert (extra[:32, 0] > 0).all() and (extra[:32, 1:] < 0).all()  # descent lowers the dominant logit, raises the rest
    assert torch.allclose(extra[32:], torch.zeros(32, 4))  # the spread band is above the floor: untouched


def _module(**model_config):
    import gymnasium as gym
    import numpy as np

    from barp_ray.rl_module import BaRPRLModule

    obs = gym.spaces.Dict({"embedding": gym.spaces.Box(-1, 1, (8,), np.float32),
                           "preference": gym.spaces.Box(0, 1, (2,), np.float32)})
    torch.manual_seed(0)
    return BaRPRLModule(observation_space=obs, action_space=gym.spaces.Discrete(4),
                        model_config={"head_hidden": [16], "preference_hidden": [4], **model_config})


def _batch(n=32):
    from ray.rllib.core.columns import Columns

    w = torch.rand(n, 1)
    return {Columns.OBS: {"embedding": torch.randn(n, 8), "preference": torch.cat([w, 1 - w], dim=1)}}


def test_exploration_floor_keeps_every_model_in_the_rollouts_but_not_in_serving():
    from ray.rllib.core.columns import Columns

    module = _module(exploration_floor=0.2)
    with torch.no_grad():
        head = module.decision_head[-1]
        head.bias.copy_(torch.tensor([30.0, 0.0, 0.0, 0.0]))  # a policy all but certain of model 0
        served = torch.softmax(module._forward(_batch())[Columns.ACTION_DIST_INPUTS], -1)
        rollout = torch.softmax(module._forward_exploration(_batch())[Columns.ACTION_DIST_INPUTS], -1)
    assert served[:, 1:].max() < 1e-6
    assert torch.allclose(rollout[:, 1:], torch.full_like(rollout[:, 1:], 0.2 / 4), atol=1e-4)


def test_critic_hidden_sizes_the_critic_and_leaves_the_policy_as_it_was():
    """Checkpoints trained before the switch have no critic_hidden: they must build the critic
    they were trained with (one layer as wide as the head's last)."""
    default, wide = _module(critic=True, critic_form="reward"), _module(critic=True, critic_form="reward",
                                                                     critic_hidden=[32, 24])
    linear = lambda m: [tuple(x.weight.shape) for x in m.baseline_head.modules() if isinstance(x, torch.nn.Linear)]
    assert linear(default) == [(16, 8), (8, 16)]  # [emb 8] -> 16 (head_hidden's last) -> 2 x 4 models
    assert linear(wide) == [(32, 8), (24, 32), (8, 24)]
    policy = lambda m: {k: v.shape for k, v in m.state_dict().items() if not k.startswith("baseline_head")}
    assert policy(default) == policy(wide)
    assert wide._forward_train(_batch())["baseline"].shape == (32, 4)


def test_film_conditioning_starts_blind_to_the_preference_and_learns_to_read_it():
    """FiLM's maps start at zero (the head is the preference-blind MLP); one gradient step on a loss
    that needs w makes the logits depend on it."""
    from ray.rllib.core.columns import Columns

    module, batch = _module(conditioning="film"), _batch()
    logits = lambda: module._forward(batch)[Columns.ACTION_DIST_INPUTS]
    flipped = {Columns.OBS: {**batch[Columns.OBS], "preference": batch[Columns.OBS]["preference"].flip(-1)}}
    assert torch.allclose(logits(), module._forward(flipped)[Columns.ACTION_DIST_INPUTS])
    optim = torch.optim.SGD(module.parameters(), lr=0.5)
    w_q = batch[Columns.OBS]["preference"][:, :1]
    loss = -(logits()[:, 0] * (w_q.squeeze(-1) - 0.5)).mean()  # model 0 good at high w_q, bad at low
    loss.backward()
    optim.step()
    assert not torch.allclose(logits(), module._forward(flipped)[Columns.ACTION_DIST_INPUTS])


@pytest.mark.parametrize("switch", ["embedding_dropout", "hidden_dropout"])
def test_dropout_acts_in_the_loss_forward_only(switch):
    """The learner's forward drops embedding coordinates or hidden units (a different draw each call,
    the critic included); rollouts, evaluation and serving read the whole net."""
    from ray.rllib.core.columns import Columns

    from barp_ray.rl_module import BASELINE

    module, batch = _module(**{switch: 0.5}, critic=True, critic_form="reward"), _batch()
    module.train()
    first, second = module._forward_train(batch), module._forward_train(batch)
    assert not torch.allclose(first[Columns.ACTION_DIST_INPUTS], second[Columns.ACTION_DIST_INPUTS])
    assert not torch.allclose(first[BASELINE], second[BASELINE])
    served = [module._forward_exploration(batch)[Columns.ACTION_DIST_INPUTS] for _ in range(2)]
    assert torch.equal(served[0], served[1])
    module.eval()
    assert torch.allclose(module._forward_train(batch)[Columns.ACTION_DIST_INPUTS], served[0])
    plain = _module(critic=True, critic_form="reward")  # same seed, same weights, no dropout
    plain.train()
    assert torch.allclose(plain._forward_train(batch)[Columns.ACTION_DIST_INPUTS], served[0])


@pytest.mark.parametrize("form", ["reward", "known_cost"])
def test_critic_dropout_fits_through_dropout_and_teaches_with_the_whole_net(form):
    """With critic_dropout the regression's Q (BASELINE) is a dropped-out forward, a new draw each
    call; the Q the policy is pulled toward (CRITIC_TARGET) is the whole net's, the same every call and
    the same as the critic outside training. The policy's logits are untouched."""
    from ray.rllib.core.columns import Columns

    from barp_ray.rl_module import BASELINE, CRITIC_TARGET

    extra = {"head": "cost_aware", "model_prices": [1.0, 2.0, 3.0, 4.0], "model_costs": [0.1, 0.2, 0.3, 0.4]} if form == "known_cost" else {}
    module, batch = _module(critic_dropout=0.5, critic=True, critic_form=form, **extra), _batch()
    plain = _module(critic=True, critic_form=form, **extra)  # same seed, same weights
    module.train()
    first, second = module._forward_train(batch), module._forward_train(batch)
    assert not torch.allclose(first[BASELINE], second[BASELINE])
    assert torch.equal(first[CRITIC_TARGET], second[CRITIC_TARGET])
    assert torch.allclose(first[Columns.ACTION_DIST_INPUTS], second[Columns.ACTION_DIST_INPUTS])
    plain.train()
    reference = plain._forward_train(batch)
    assert CRITIC_TARGET not in reference
    assert torch.allclose(first[CRITIC_TARGET], reference[BASELINE])
    assert torch.allclose(first[Columns.ACTION_DIST_INPUTS], reference[Columns.ACTION_DIST_INPUTS])


def test_reward_shaped_critic_is_linear_in_the_preference():
    """Q(x, w, a) = w_q q(x, a) - w_c c(x, a): what is learned at one w is known at every other."""
    from ray.rllib.core.columns import Columns

    from barp_ray.rl_module import BASELINE, CRITIC_QUALITY

    module = _module(critic=True, critic_form="reward", learned_baseline=False)
    b = _batch(1)
    ends = []
    for wq in (0.0, 0.3, 1.0):
        b[Columns.OBS]["preference"] = torch.tensor([[wq, 1 - wq]])
        with torch.no_grad():
            ends.append(module._forward_train(b)[BASELINE][0])
    assert torch.allclose(ends[1], 0.3 * ends[2] + 0.7 * ends[0], atol=1e-5)
    with torch.no_grad():
        out = module._forward_train(b)
    assert torch.allclose(out[CRITIC_QUALITY][0], ends[2])  # at w_q = 1, Q is the quality alone


def test_critic_shrinkage_pulls_what_the_policy_reads_toward_each_models_mean_quality():
    """training.critic_shrinkage k: the policy reads w_q (mean q + k (q(x) - mean q)) - w_c c. At
    k = 0 two prompts the critic tells apart get the same update; k = 1 is the loss as it was."""
    import pytest

    pref = torch.tensor([[0.4, 0.6], [0.4, 0.6]])
    quality = torch.tensor([[0.5, 0.9], [0.5, 0.1]])  # the critic: prompt 0 wants model 1, prompt 1 does not
    cost = torch.tensor([[0.1, 0.3], [0.1, 0.3]])
    critic = pref[:, :1] * quality - pref[:, 1:] * cost

    def grads(keep: float) -> torch.Tensor:
        logits = torch.zeros(2, 2, requires_grad=True)
        settings = LossSettings(baseline="critic", entropy_coeff=0.0, critic_kl_coeff=1.0, critic_shrinkage=keep)
        loss, _ = barp_loss(logits, torch.zeros(2, dtype=torch.long), torch.tensor([0.1, 0.1]), settings,
                            baseline=critic, preference=pref, critic_quality=quality)
        loss.backward()
        return logits.grad

    apart, together = grads(1.0), grads(0.0)
    assert -apart[0, 1] > 0 > -apart[1, 1]  # unshrunk: model 1 rises for prompt 0 only
    assert torch.allclose(together[0], together[1])  # fully shrunk: both prompts read the means
    assert -together[0, 1] < 0  # mean quality 0.5 each: the cheap model 0 wins at w_q 0.4
    middle = grads(0.5)
    assert -together[0, 1] < -middle[0, 1] < -apart[0, 1]
    with pytest.raises(ValueError, match="critic_shrinkage"):
        barp_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(2),
                  LossSettings(baseline="critic", critic_shrinkage=0.5), baseline=critic, preference=pref)


def test_cost_gated_critic_shrinkage_pulls_by_the_cost_weight_and_leaves_w_q_1_alone():
    """critic_shrinkage_gate cost: the share pulled toward the means is (1 - k) w_c, so at w_q = 1
    the policy reads the critic's own Q, and at w_q 0.4 the pull is 0.6 of the ungated one."""
    from barp_ray.training.learner import shrink_quality

    quality = torch.tensor([[0.5, 0.9], [0.5, 0.1]])
    for w_q in (1.0, 0.4):
        pref = torch.tensor([[w_q, 1 - w_q]] * 2)
        critic = pref[:, :1] * quality - pref[:, 1:] * torch.tensor([[0.1, 0.3]] * 2)
        gated = shrink_quality(critic, quality, pref, keep=0.0, gate="cost")
        even = shrink_quality(critic, quality, pref, keep=0.0)
        assert torch.allclose(critic - gated, (1 - w_q) * (critic - even))
        if w_q == 1.0:
            assert torch.equal(gated, critic) and not torch.equal(even, critic)


def test_correction_coeff_weighs_the_observed_outcome_against_the_critic():
    """training.correction_coeff c: the taken model's step carries c (r - Q(a_t)); at 0 the update
    reads the critic alone (a surprising outcome moves nothing), at 1 it is the unbiased estimator."""
    pref = torch.tensor([[0.8, 0.2]])
    critic = torch.tensor([[0.3, 0.3]])  # the critic sees no difference between the two models

    def grad(coeff: float) -> torch.Tensor:
        logits = torch.zeros(1, 2, requires_grad=True)
        settings = LossSettings(baseline="critic", entropy_coeff=0.0, normalize_advantages=False, correction_coeff=coeff)
        loss, _ = barp_loss(logits, torch.tensor([1]), torch.tensor([0.9]), settings, baseline=critic, preference=pref)
        loss.backward()
        return logits.grad

    full, half, none = grad(1.0), grad(0.5), grad(0.0)
    assert -full[0, 1] > 0  # model 1 did better than the critic said: it rises
    assert torch.allclose(half, 0.5 * full)
    assert torch.equal(none, torch.zeros(1, 2))


def test_known_cost_critic_learns_quality_only_and_charges_the_heads_known_costs():
    """critic_form known_cost: Q(x, w, a) = w_q q(x, a) - w_c c_bar_a, c_bar the cost-aware head's
    known normalised cost at today's (or the logged) prices, capped at 1: at the cost end Q is
    exactly minus the known cost, whatever the critic has learned."""
    import pytest
    from ray.rllib.core.columns import Columns

    from barp_ray.rl_module import BASELINE, LOG_PRICE

    costs = [0.1, 0.3, 0.6, 1.0]
    module = _module(head="cost_aware", model_prices=[0.1, 0.3, 0.6, 10.0], model_costs=costs,
                     critic=True, critic_form="known_cost", learned_baseline=False)
    b = _batch(3)
    b[Columns.OBS]["preference"] = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.4, 0.6]])
    with torch.no_grad():
        q = module.baseline_head(b[Columns.OBS]["embedding"])
        out = module._forward_train(b)[BASELINE]
    assert q.shape == (3, 4)  # one quality estimate per model, no cost branch
    assert torch.allclose(out[0], -torch.tensor(costs))
    assert torch.allclose(out[1], q[1])
    assert torch.allclose(out[2], 0.4 * q[2] - 0.6 * torch.tensor(costs), atol=1e-6)
    # a logged row's own prices: model 0 at 4x its training price costs 0.4, model 3 stays capped at 1
    b[Columns.OBS][LOG_PRICE] = torch.log(torch.tensor([[0.4, 0.3, 0.6, 20.0]] * 3))
    with torch.no_grad():
        logged = module._forward_train(b)[BASELINE]
    assert torch.allclose(logged[0], -torch.tensor([0.4, 0.3, 0.6, 1.0]))
    with pytest.raises(ValueError, match="known_cost"):
        _module(critic=True, critic_form="known_cost")

def test_price_aware_head_follows_a_price_change_at_once_and_only_where_cost_matters():
    import pytest

    module = _module(head="price_aware", model_prices=[0.1, 0.5, 2.0, 10.0])
    x = torch.randn(64, 8)
    even, quality_only = torch.full((64, 2), 0.5), torch.tensor([[1.0, 0.0]] * 64)
    before = {w: module.action_probabilities(x, p) for w, p in (("even", even), ("quality", quality_only))}
    assert "log_price" not in module.state_dict()  # published weights never carry prices over the served ones
    module.set_prices([0.1, 0.5, 4.0, 10.0])  # model 2 doubles its price
    after = {w: module.action_probabilities(x, p) for w, p in (("even", even), ("quality", quality_only))}
    assert (after["even"][:, 2] < before["even"][:, 2]).all()  # at w_c > 0 its share falls on every prompt
    assert (after["even"][:, [0, 1, 3]] > before["even"][:, [0, 1, 3]]).all()  # and goes to the others
    assert torch.allclose(after["quality"], before["quality"])  # at w_c = 0 price does not matter
    with pytest.raises(ValueError, match="model_prices"):
        _module(head="price_aware", model_prices=[1.0, 2.0])
    with pytest.raises(ValueError, match="prices"):
        module.set_prices([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="price_aware"):
        _module().set_prices([1.0, 1.0, 1.0, 1.0])


def test_cost_aware_head_picks_the_cheapest_model_at_the_cost_end_and_follows_prices():
    import pytest

    costs = [0.1, 0.3, 0.6, 1.0]
    module = _module(head="cost_aware", model_prices=[0.1, 0.3, 0.6, 10.0], model_costs=costs)
    with torch.no_grad():  # a head that, left to itself, would prefer the dearest model by far
        module.decision_head[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 50.0]))
    x = torch.randn(64, 8)
    cost_only, quality_only = torch.tensor([[0.0, 1.0]] * 64), torch.tensor([[1.0, 0.0]] * 64)
    p_cost = module.action_probabilities(x, cost_only)
    assert (p_cost.argmax(-1) == 0).all()  # w_q = 0: the prompt's logits cannot outvote the known cost
    assert torch.allclose(p_cost[0], p_cost[1])  # ... and do not enter at all
    assert (module.action_probabilities(x, quality_only).argmax(-1) == 3).all()  # w_c = 0: cost does not count
    assert {"trained_cost", "trained_log_price", "log_price"}.isdisjoint(module.state_dict())
    module.set_prices([0.4, 0.3, 0.6, 10.0])  # the cheapest model gets 4x dearer: 0.4 normalised, above model 1
    assert (module.action_probabilities(x, cost_only).argmax(-1) == 1).all()
    module.set_prices([10.0, 0.3, 0.6, 10.0])  # capped at 1, as the reward caps it: tied with model 3
    assert torch.allclose(module.action_probabilities(x, cost_only)[:, 0], module.action_probabilities(x, cost_only)[:, 3])
    with pytest.raises(ValueError, match="model_costs"):
        _module(head="cost_aware", model_prices=[0.1, 0.3, 0.6, 10.0], model_costs=[0.1, 0.0, 0.6, 1.0])
    ungated = _module(head="cost_aware", model_prices=[0.1, 0.3, 0.6, 10.0], model_costs=costs, quality_gate=False)
    with torch.no_grad():
        ungated.decision_head[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 50.0]))
    assert (ungated.action_probabilities(x, cost_only).argmax(-1) == 3).all()  # without the gate the prompt's logits count at w_q = 0


def test_decision_shrinkage_pulls_the_routing_decision_toward_the_average_prompt_but_not_the_rollouts():
    import pytest
    from ray.rllib.core.columns import Columns

    reference = [0.1] * 8
    costs = dict(head="cost_aware", model_prices=[0.1, 0.3, 0.6, 1.0], model_costs=[0.1, 0.3, 0.6, 1.0])
    plain = _module(**costs)
    batch = _batch(64)
    x, w = batch[Columns.OBS]["embedding"], batch[Columns.OBS]["preference"]
    with torch.no_grad():
        raw = plain.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
        for k, gate in ((1.0, "none"), (0.0, "none"), (0.5, "none"), (0.0, "cost")):
            module = _module(**costs, decision_shrinkage=k, decision_shrinkage_gate=gate, reference_embedding=reference)
            module.load_state_dict(plain.state_dict())  # the same weights: the buffer is not among them
            assert "reference_embedding" not in module.state_dict()
            decided = module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
            # the rollouts (and so the loss's behaviour log-probs) read the policy unshrunk
            assert torch.allclose(module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS], raw)
            at_reference = module.forward_inference({Columns.OBS: {"embedding": torch.tensor([reference] * 64), "preference": w}})
            keep = k if gate == "none" else 1 - (1 - k) * w[:, 1:]
            # logits are affine in the head's output, so the decision is the interpolation of the two
            assert torch.allclose(decided, at_reference[Columns.ACTION_DIST_INPUTS] + keep * (raw - at_reference[Columns.ACTION_DIST_INPUTS]), atol=1e-5)
        # k = 0 without a gate: every prompt at the same w gets the average prompt's decision
        full = _module(**costs, decision_shrinkage=0.0, reference_embedding=reference)
        full.load_state_dict(plain.state_dict())
        same_w = {Columns.OBS: {"embedding": x, "preference": torch.tensor([[0.7, 0.3]] * 64)}}
        p = full.forward_inference(same_w)[Columns.ACTION_DIST_INPUTS]
        assert torch.allclose(p, p[:1].expand_as(p), atol=1e-5)
    with pytest.raises(ValueError, match="reference_embedding"):
        _module(**costs, decision_shrinkage=0.5)
    with pytest.raises(ValueError, match="reference_embedding"):  # and live: a checkpoint from before it
        plain.set_decision_shrinkage(0.5)
    with pytest.raises(ValueError, match="a share in"):
        full.set_decision_shrinkage(1.5)
    with pytest.raises(ValueError, match="model_conditioned"):
        _module(head="model_conditioned", model_cards=_cards(*TRAINED), decision_shrinkage=0.5, reference_embedding=reference)


def test_decision_cost_multiplier_charges_the_known_price_more_in_the_decision_but_not_the_rollouts():
    import pytest
    from ray.rllib.core.columns import Columns

    batch = _batch(64)
    w = batch[Columns.OBS]["preference"]
    for head, extra in (("cost_aware", {"model_costs": [0.1, 0.3, 0.6, 1.0]}), ("price_aware", {})):
        spec = dict(head=head, model_prices=[0.1, 0.3, 0.6, 1.0], **extra)
        plain = _module(**spec)
        charged = _module(**spec, decision_cost_multiplier=3.0)
        charged.load_state_dict(plain.state_dict())
        with torch.no_grad():
            raw = plain.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
            price = plain._price_term(w, batch[Columns.OBS])
            decided = charged.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
            # the price term, and only it, counts three times; at w_q = 1 nothing is paid, so nothing moves
            assert torch.allclose(decided, raw - 2.0 * price, atol=1e-5), head
            assert not torch.allclose(decided, raw, atol=1e-3), head
            # the rollouts (and so the loss's behaviour log-probs) read the policy as trained
            assert torch.allclose(charged.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS],
                                  plain.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS], atol=1e-6), head
            cheapest_first = charged.action_probabilities(batch[Columns.OBS]["embedding"], w)[:, 0].mean()
            assert cheapest_first > plain.action_probabilities(batch[Columns.OBS]["embedding"], w)[:, 0].mean(), head
    charged.set_decision_cost_multiplier(1.0)  # live, back to the trained decision
    with torch.no_grad():
        assert torch.allclose(charged.forward_inference(batch)[Columns.ACTION_DIST_INPUTS], raw, atol=1e-6)
    with pytest.raises(ValueError, match=r"decision_cost_multiplier: must be a number in \(0, 1000\]"):
        charged.set_decision_cost_multiplier(0.0)
    with pytest.raises(ValueError, match="decision_cost_multiplier: scales the known price term"):
        _module(head="concat", decision_cost_multiplier=2.0)


def _cards(*specs):
    from barp_ray.model_cards import ModelCard

    return [ModelCard(name, p, p, size).as_dict() for name, p, size in specs]


TRAINED = (("small", 0.1, 7.0), ("mid", 0.5, 45.0), ("large", 2.0, 70.0), ("nosize", 1.0, None))


def test_model_conditioned_head_routes_over_whatever_set_is_offered():
    from ray.rllib.core.columns import Columns

    from barp_ray.model_cards import ModelCard
    from barp_ray.rl_module import BASELINE

    module = _module(head="model_conditioned", model_cards=_cards(*TRAINED), critic=True, critic_form="reward")
    assert not any(k.startswith(("offered", "log_price")) for k in module.state_dict())  # serving config, not weights
    x, w = torch.randn(16, 8), torch.full((16, 2), 0.5)
    assert module.action_probabilities(x, w).shape == (16, 4)
    new = ModelCard("newcomer", 0.3, 0.3, 12.0)
    module.offer([ModelCard(**c) for c in _cards(TRAINED[2], TRAINED[0])] + [new])  # one removed, order changed, one new
    assert module.offered == ("large", "small", "newcomer")
    assert module.offered_ids.tolist() == [2, 0, 4]  # the newcomer is scored with the shared "unknown" vector
    probs = module.action_probabilities(x, w)
    assert probs.shape == (16, 3) and torch.allclose(probs.sum(-1), torch.ones(16))
    out = module._forward_train(_batch(16))  # the learner and the critic follow the offered set too
    assert out[Columns.ACTION_DIST_INPUTS].shape == (16, 3) and out[BASELINE].shape == (16, 3)


def test_model_conditioned_head_follows_a_price_change_only_through_the_price_term():
    from barp_ray.model_cards import ModelCard

    module = _module(head="model_conditioned", model_cards=_cards(*TRAINED))
    cards = [ModelCard(**c) for c in _cards(*TRAINED)]
    x = torch.randn(64, 8)
    even, quality_only = torch.full((64, 2), 0.5), torch.tensor([[1.0, 0.0]] * 64)
    before = {k: module.action_probabilities(x, p) for k, p in (("even", even), ("quality", quality_only))}
    cards[1] = ModelCard("mid", 1.0, 1.0, 45.0)  # "mid" doubles its price
    module.offer(cards)
    after = {k: module.action_probabilities(x, p) for k, p in (("even", even), ("quality", quality_only))}
    assert (after["even"][:, 1] < before["even"][:, 1]).all()
    assert torch.allclose(after["quality"], before["quality"])


def test_model_lists_with_bad_entries_name_the_field():
    import pytest

    from barp_ray.model_cards import CardError, ModelCard, parse_cards

    good = {"a": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}, "b": {"input_per_mtok": 1, "output_per_mtok": 1, "size_b": 70}}
    assert [c.name for c in parse_cards(good)] == ["a", "b"]
    for raw, field in [({}, "models: the model set is empty"),
                       ({"a": {"input_per_mtok": 0.1}}, "models.a.output_per_mtok: missing"),
                       ({"a": {"input_per_mtok": -1, "output_per_mtok": 1}}, "models.a.input_per_mtok"),
                       ({"a": {"input_per_mtok": 0, "output_per_mtok": 0}}, "models.a: input_per_mtok"),
                       ({"a": {"input_per_mtok": 1, "output_per_mtok": 1, "size_b": "big"}}, "models.a.size_b"),
                       ({"a": {"input_per_mtok": 1, "output_per_mtok": 1, "colour": 3}}, "models.a: unknown field"),
                       (["a"], "models: must be a mapping")]:
        with pytest.raises(CardError, match=field.replace(".", r"\.").replace("[", r"\[")):
            parse_cards(raw)
    module = _module(head="model_conditioned", model_cards=_cards(*TRAINED))
    with pytest.raises(CardError, match=r"models\.small: listed twice"):
        module.offer([ModelCard("small", 1, 1), ModelCard("small", 2, 2)])
    with pytest.raises(CardError, match="empty"):
        module.offer([])
    assert module.offered == tuple(n for n, _, _ in TRAINED)  # a refused list changes nothing
    with pytest.raises(ValueError, match="model_conditioned"):
        _module().offer([ModelCard("a", 1, 1)])
    assert _module(head="model_conditioned", model_cards=_cards(*TRAINED), critic=True).critic_form == "reward"
    with pytest.raises(ValueError, match="model_cards"):
        _module(head="model_conditioned", model_cards=_cards(*TRAINED[:2]))


def test_an_ensemble_routes_by_its_members_mean_and_each_member_fits_its_own_loss():
    """policy.members: the module's distribution (rollouts, routing) is the mixture of its members';
    each member has its own critic and its own loss, so one member's loss moves none of another's
    weights, and the serving weights leave every member's critic behind."""
    from ray.rllib.core.columns import Columns

    from barp_ray.policy import policy_state
    from barp_ray.rl_module import BASELINE, MEMBER_OUTPUTS

    module, batch = _module(members=3, critic=True, critic_form="reward", critic_dropout=0.5), _batch()
    obs = batch[Columns.OBS]
    module.eval()
    mixed = module.action_probabilities(obs["embedding"], obs["preference"])
    each = torch.stack([m.action_probabilities(obs["embedding"], obs["preference"]) for m in module.members])
    assert torch.allclose(mixed, each.mean(0), atol=1e-6)
    assert not torch.allclose(each[0], each[1])  # members start apart
    module.train()
    out = module._forward_train(batch)
    assert len(out[MEMBER_OUTPUTS]) == 3
    first = out[MEMBER_OUTPUTS][0]
    loss, _ = barp_loss(first[Columns.ACTION_DIST_INPUTS], torch.zeros(32, dtype=torch.long), torch.rand(32),
                        LossSettings(baseline="critic", critic_kl_coeff=1.0), baseline=first[BASELINE])
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.members[0].baseline_head.parameters())
    assert all(p.grad is None for p in module.members[1].parameters())
    assert not any(".baseline_head." in k for k in policy_state(module))
    assert any(k.startswith("members.2.decision_head.") for k in policy_state(module))


def test_ensemble_members_play_and_learn_from_their_own_rounds_with_member_data_own():
    """member_data "own": each rollout round is drawn from one member's policy (rows split evenly) and
    the runner records which; the training forward gives each member only those rows. A batch without
    the column (continuous training's logged traffic) goes to every member; "bootstrap" gives each
    member its own resample of the batch."""
    from ray.rllib.core.columns import Columns

    from barp_ray.rl_module import MEMBER, MEMBER_OUTPUTS, MEMBER_ROWS

    module, batch = _module(members=3, member_data="own", critic=True, critic_form="reward"), _batch(30)
    module.train()
    with torch.no_grad():
        played = module._forward_exploration(batch)
        alone = [m._forward_exploration(batch)[Columns.ACTION_DIST_INPUTS] for m in module.members]
    who = played[MEMBER]
    assert torch.bincount(who).tolist() == [10, 10, 10]
    for i in range(30):
        assert torch.allclose(played[Columns.ACTION_DIST_INPUTS][i], alone[int(who[i])][i], atol=1e-6)
    out = module._forward_train({**batch, MEMBER: who})
    for e, (rows, member_out) in enumerate(zip(out[MEMBER_ROWS], out[MEMBER_OUTPUTS])):
        assert torch.equal(who[rows], torch.full((10,), e))
        assert member_out[Columns.ACTION_DIST_INPUTS].shape == (10, 4)
    logged = module._forward_train(batch)
    assert MEMBER_ROWS not in logged and all(o[Columns.ACTION_DIST_INPUTS].shape == (30, 4) for o in logged[MEMBER_OUTPUTS])
    boot = _module(members=2, member_data="bootstrap", critic=True, critic_form="reward")
    boot.train()
    resamples = boot._forward_train(batch)[MEMBER_ROWS]  # bagging: each member its own resample
    assert all(r.shape == (30,) for r in resamples) and not torch.equal(resamples[0], resamples[1])
