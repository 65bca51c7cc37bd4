"""The BaRP policy pi(a | x, w) as an RLlib RLModule.

h(x) is the frozen MiniLM embedding (computed once, outside the module); phi(w) is a small
MLP over the preference; the decision head reads [h(x); phi(w)] and emits K logits. Training
adds a baseline head b(x, w) that only the learner uses (inference_only drops it), so serving
ships nothing it does not need.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch import TorchRLModule

from barp_ray.config import CONDITIONINGS, MEMBER_DATA, POLICY_HEADS as HEADS, PRICE_HEADS, SHRINKAGE_GATES, cost_multiplier_problem

BASELINE = "baseline"
# The reward-shaped critics' per-model quality q(x, .) alone, for the loss's shrinkage of it.
CRITIC_QUALITY = "critic_quality"
# The critic's Q from the whole net when the critic trains with dropout (critic_dropout): what the policy
# is pulled toward, while BASELINE (the dropped-out forward) is what the regression fits.
CRITIC_TARGET = "critic_target"
# Optional observation columns a logged batch may carry (continuous training): the [B, K] log
# prices and the [B, K] models each decision could choose among (a request's `candidates`).
LOG_PRICE = "log_price"
ALLOWED = "allowed"
# An ensemble's (members > 1) per-member forward outputs, each fitted by its own loss, and (member_data
# "own", "bootstrap") the batch rows each was computed on.
MEMBER_OUTPUTS = "member_outputs"
MEMBER_ROWS = "member_rows"
# member_data "own": the member whose policy drew each rollout round (a column the runner records).
MEMBER = "member"


def mlp(sizes: list[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def forward_with_dropout(net: nn.Sequential, x: torch.Tensor, p: float) -> torch.Tensor:
    """`net(x)` with dropout after each hidden activation. Only the loss's forward passes p > 0, so
    rollouts and serving always read the whole net (the same rule as `embedding_dropout`)."""
    if p <= 0:
        return net(x)
    for layer in net:
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            x = nn.functional.dropout(x, p)
    return x


CRITIC_FORMS = ("free", "reward", "known_cost")


class FiLMHead(nn.Module):
    """The decision head reading h(x) alone, every hidden layer scaled and shifted by phi(w) (FiLM).

    Concatenating [h(x); phi(w)] lets the preference add to the first layer's input; here it can
    change how strongly each prompt feature counts at every layer, which is what a trade-off dial
    needs (at w_q = 1 the features that predict quality, near w_q = 0 hardly any). The FiLM maps
    start at zero, so the head starts as the preference-blind MLP and learns where w matters."""

    def __init__(self, emb_dim: int, pref_dim: int, hidden: list[int], out: int):
        super().__init__()
        self.emb_dim = emb_dim
        sizes = [emb_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.films = nn.ModuleList(nn.Linear(pref_dim, 2 * b) for b in hidden)
        for film in self.films:
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
        self.out = nn.Linear(sizes[-1], out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, p = z[:, : self.emb_dim], z[:, self.emb_dim :]
        for layer, film in zip(self.layers, self.films):
            gamma, beta = film(p).chunk(2, dim=-1)
            h = torch.relu(layer(h) * (1.0 + gamma) + beta)
        return self.out(h)


class BaRPRLModule(TorchRLModule):
    """model_config: preference_hidden (list[int]), head_hidden (list[int]), learned_baseline (bool),
    critic (bool: the training-only head predicts every model's reward, Q(x, w, .), instead of one
    baseline value; the loss then uses it as a doubly robust critic), critic_form, critic_hidden
    (list[int]; default [head_hidden[-1]]), exploration_floor, conditioning ("concat": the head reads
    [h(x); phi(w)], the paper; "film": `FiLMHead`).

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

    head "cost_aware" scores in the reward's own shape: logit_a = w_q * f_a(h, phi(w)) - w_c * s *
    c_a, where c_a is model a's known normalised cost, min(cost / tau, 1) averaged over the
    training prompts (model_config["model_costs"], what the full-information routers use too),
    scaled by today's price over the training price. The learned part only has to say what a
    model is worth for this prompt; at w_q = 0 the cheapest model wins exactly, and near it the
    ranking of cheap models comes from their prices instead of from weights that rounds at the
    cost end rarely train. s = softplus(alpha) is learned (how sharp the trade is). With
    quality_gate False the learned logits are not multiplied by w_q (price_aware's form with the
    normalised cost in place of log price).

    head "model_conditioned" scores each (prompt, preference, model card) instead of emitting K
    logits: logit_m = <trunk([h(x); phi(w)]), tower([features(card_m); e_m])> plus the same price
    term, where e_m is a learned vector per model seen in training and a shared "unknown" vector
    for any other. The softmax runs over whatever set is offered (`offer`), so models can be
    added, removed or re-priced at serving time. During training each (round, model) pair sees
    the unknown vector with probability model_id_dropout, so the tower learns what a card alone
    says about a model: that is what a newly added model is scored with until feedback arrives.
    model_config["model_cards"] lists the training models' cards (ModelCard.as_dict()); its critic
    is always reward-shaped and model-conditioned the same way (two numbers per card).

    decision_shrinkage k < 1 (inference only: serving, evaluation; never the rollouts or the loss)
    decides with the decision head's output for this prompt pulled toward its output for the
    average training prompt (model_config["reference_embedding"], the mean h(x) over the training
    prompts) at the same w: out_ref + k * (out - out_ref). On a prompt from a task the policy never
    saw, what it learned per prompt from other tasks is the least reliable part of the decision, and
    the average prompt's choice is the prior to fall back toward. With decision_shrinkage_gate
    "cost" the kept share is 1 - (1 - k) * w_c: no pull at w_q = 1, where nothing is paid.

    decision_cost_multiplier m > 1 (inference only, the price heads) decides with the known price
    term charged m times: the learned quality is trusted 1/m as much against a price that is a fact.
    On tasks the policy never saw that is the risk-averse decision (chosen on task-held-out folds).

    members E > 1 holds E such modules (`_setup_members`) and routes by the mean of their
    distributions; MEMBER_OUTPUTS carries each one's training forward for its own loss.
    """

    def setup(self) -> None:
        cfg = self.model_config or {}
        self.members: nn.ModuleList | None = None
        if int(cfg.get("members", 1)) > 1:
            self._setup_members(cfg)
            return
        emb_dim = self.observation_space["embedding"].shape[0]
        pref_hidden = list(cfg.get("preference_hidden", [32]))
        head_hidden = list(cfg.get("head_hidden", [256, 128]))
        # The critic's hidden layers: by default one, as wide as the head's last (what every checkpoint
        # before critic_hidden was trained with, so their meta needs no new key).
        critic_hidden = list(cfg.get("critic_hidden") or head_hidden[-1:])
        k = int(self.action_space.n)
        self.preference_net = mlp([2, *pref_hidden], final_activation=True)
        self.head = str(cfg.get("head", "concat"))
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        self.baseline_head: nn.Module | None = None
        self.critic = bool(cfg.get("critic", False))
        self.critic_form = str(cfg.get("critic_form", "free"))
        if self.critic_form not in CRITIC_FORMS:
            raise ValueError(f"critic_form must be one of {CRITIC_FORMS}, got {self.critic_form!r}")
        self.exploration_floor = float(cfg.get("exploration_floor", 0.0))
        self.embedding_dropout = float(cfg.get("embedding_dropout", 0.0))
        self.hidden_dropout = float(cfg.get("hidden_dropout", 0.0))
        self.critic_dropout = float(cfg.get("critic_dropout", 0.0))
        self.conditioning = str(cfg.get("conditioning", "concat"))
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.conditioning == "film" and self.head == "model_conditioned":
            raise ValueError("conditioning 'film' applies to the decision head of the other heads, not model_conditioned")
        if self.critic_dropout > 0 and not (self.critic and self.critic_form in ("reward", "known_cost") and self.head != "model_conditioned"):
            raise ValueError("critic_dropout: needs a reward-shaped critic (critic_form reward or known_cost), not head model_conditioned")
        if self.hidden_dropout > 0 and (self.conditioning == "film" or self.head == "model_conditioned"):
            raise ValueError("hidden_dropout: applies to the plain MLP decision head and critic (conditioning concat, not model_conditioned)")
        reference = cfg.get("reference_embedding")
        if reference is not None:
            if len(reference) != emb_dim:
                raise ValueError(f"reference_embedding: need {emb_dim} numbers (the mean training h(x)), got {len(reference)}")
            # Not in the state dict, like the prices: a fact of the training set, not a weight.
            self.register_buffer("reference_embedding", torch.as_tensor(reference, dtype=torch.float32), persistent=False)
        self.set_decision_shrinkage(float(cfg.get("decision_shrinkage", 1.0)), str(cfg.get("decision_shrinkage_gate", "none")))
        self.set_decision_cost_multiplier(float(cfg.get("decision_cost_multiplier", 1.0)))
        if self.head == "model_conditioned":
            self._setup_model_conditioned(cfg, emb_dim, pref_hidden, head_hidden, k)
            return
        out = 2 * k if self.head == "preference_gated" else k
        if self.conditioning == "film":
            self.decision_head = FiLMHead(emb_dim, pref_hidden[-1], head_hidden, out)
        else:
            self.decision_head = mlp([emb_dim + pref_hidden[-1], *head_hidden, out], final_activation=False)
        if self.head in PRICE_HEADS:
            prices = cfg.get("model_prices")
            if prices is None or len(prices) != k or not all(float(x) > 0 for x in prices):
                raise ValueError(f"head {self.head!r} needs model_prices: {k} positive prices, got {prices!r}")
            # Not in the state dict: published weights must not carry prices back over the served ones.
            self.register_buffer("log_price", torch.log(torch.as_tensor(prices, dtype=torch.float32)), persistent=False)
            scale = float(cfg.get("cost_scale", 5.0)) if self.head == "cost_aware" else 1.0
            self.price_scale = nn.Parameter(torch.tensor(scale + float(np.log(-np.expm1(-scale)))))  # softplus = scale
        if self.head == "cost_aware":
            costs = cfg.get("model_costs")
            if costs is None or len(costs) != k or not all(0 < float(x) <= 1 for x in costs):
                raise ValueError(f"head 'cost_aware' needs model_costs: {k} normalised costs in (0, 1], got {costs!r}")
            # The training facts the price term is measured against; from model_config, like the prices.
            self.register_buffer("trained_log_price", self.log_price.clone(), persistent=False)
            self.register_buffer("trained_cost", torch.as_tensor(costs, dtype=torch.float32), persistent=False)
            self.quality_gate = bool(cfg.get("quality_gate", True))
        if self.critic and self.critic_form == "known_cost" and self.head != "cost_aware":
            raise ValueError("critic_form 'known_cost' needs head 'cost_aware' (the known normalised costs)")
        if (cfg.get("learned_baseline", True) or self.critic) and not self.inference_only:
            if self.critic and self.critic_form == "known_cost":
                self.baseline_head = mlp([emb_dim, *critic_hidden, k], final_activation=False)
            elif self.critic and self.critic_form == "reward":
                self.baseline_head = mlp([emb_dim, *critic_hidden, 2 * k], final_activation=False)
            else:
                out = k if self.critic else 1
                self.baseline_head = mlp([emb_dim + pref_hidden[-1], *critic_hidden, out], final_activation=False)

    def _setup_members(self, cfg: dict) -> None:
        """An ensemble of independently initialised policies, each with its own critic and loss;
        routing reads the mixture of their distributions. With member_data "own" each rollout round
        is played by one member, which alone learns from it: E learners as if trained apart (on
        validation, three seeds' policies averaged routed better than each; three members that all
        learned from the mixture's rounds did not). One module keeps one learner, one checkpoint
        and one weight push to serving. Batches without a MEMBER column (continuous training's
        logged traffic, drawn from the mixture) teach every member, importance-weighted."""
        if cfg.get("head") == "model_conditioned":
            raise ValueError("members: an ensemble of the fixed-K heads; model_conditioned offers cards per module")
        self.member_data = str(cfg.get("member_data", "own"))
        if self.member_data not in MEMBER_DATA:
            raise ValueError(f"member_data must be one of {MEMBER_DATA}, got {self.member_data!r}")
        one = {**cfg, "members": 1}
        self.members = nn.ModuleList(
            BaRPRLModule(observation_space=self.observation_space, action_space=self.action_space,
                         inference_only=self.inference_only, model_config=one)
            for _ in range(int(cfg["members"])))
        self.head = self.members[0].head

    @staticmethod
    def _rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
        return {Columns.OBS: {k: v[rows] for k, v in batch[Columns.OBS].items()}}

    @staticmethod
    def _mixture(logits: list[torch.Tensor]) -> torch.Tensor:
        """log of the members' mean probabilities, a valid ACTION_DIST_INPUTS (the log-softmax of itself)."""
        logp = torch.stack([torch.log_softmax(x, dim=-1) for x in logits])
        return torch.logsumexp(logp, dim=0) - float(np.log(len(logits)))

    def _setup_model_conditioned(self, cfg: dict, emb_dim: int, pref_hidden: list[int], head_hidden: list[int], k: int) -> None:
        from barp_ray.model_cards import FEATURES, ModelCard, check_cards

        raw = cfg.get("model_cards")
        if not raw or len(raw) != k:
            raise ValueError(f"head 'model_conditioned' needs model_cards for its {k} models, got {raw!r}")
        cards = check_cards([ModelCard(**c) for c in raw], "model_cards")
        # Its critic is always reward-shaped, per card (a per-model critic must score any card):
        # the continuous trainer adds a critic to checkpoints trained with a plain baseline.
        self.critic_form = "reward" if self.critic else self.critic_form
        self.trained_index = {c.name: i for i, c in enumerate(cards)}
        self.trained_cards = {c.name: c for c in cards}
        self.model_id_dropout = float(cfg.get("model_id_dropout", 0.1))
        id_dim, width = int(cfg.get("model_id_dim", 16)), head_hidden[-1]
        self.model_id = nn.Embedding(k + 1, id_dim)  # row k: any model not seen in training
        nn.init.normal_(self.model_id.weight, std=0.1)
        self.decision_head = mlp([emb_dim + pref_hidden[-1], *head_hidden], final_activation=True)  # the trunk
        self.model_tower = mlp([len(FEATURES) + id_dim, 64, width], final_activation=False)
        self.price_scale = nn.Parameter(torch.tensor(0.5413))  # softplus(0.5413) = 1
        if self.critic and not self.inference_only:
            self.critic_trunk = mlp([emb_dim, width], final_activation=True)
            self.critic_tower = mlp([len(FEATURES) + id_dim, 64, 2 * width], final_activation=False)
        elif cfg.get("learned_baseline", True) and not self.inference_only:
            self.baseline_head = mlp([emb_dim + pref_hidden[-1], width, 1], final_activation=False)
        # Not in the state dict: what is offered today is serving configuration, not weights.
        for name in ("offered_features", "offered_ids", "log_price"):
            self.register_buffer(name, torch.zeros(0), persistent=False)
        self.offer(cards)

    def offer(self, cards) -> None:
        """The models routing chooses among from now on (model_conditioned head), in this order.

        The tower reads a trained model's training card, and today's price enters only through the
        price term: a price change then moves that model's share in one direction (down at
        w_c > 0 for a dearer model), never through what the tower learned prices say about
        quality. A model not seen in training is described by the card given here."""
        from barp_ray.model_cards import check_cards, feature_matrix

        if self.head != "model_conditioned":
            raise ValueError(f"head {self.head!r} has one output per trained model; train with "
                             "policy.head: model_conditioned to offer other models")
        cards = check_cards(list(cards), "models")
        device = self.model_id.weight.device
        unknown = self.model_id.num_embeddings - 1
        self.offered_ids = torch.as_tensor([self.trained_index.get(c.name, unknown) for c in cards], device=device)
        described = [self.trained_cards.get(c.name, c) for c in cards]
        self.offered_features = torch.as_tensor(feature_matrix(described), device=device)
        self.log_price = torch.log(torch.as_tensor([c.blended_price for c in cards], dtype=torch.float32, device=device))
        self.offered = tuple(c.name for c in cards)

    def _model_inputs(self, batch_size: int, drop: bool) -> torch.Tensor:
        """[K, F + d] card features and model vectors, or [B, K, F + d] with ids dropped at random."""
        ids, feats = self.offered_ids, self.offered_features
        if drop and self.model_id_dropout > 0:
            k = ids.numel()
            mask = torch.rand(batch_size, k, device=ids.device) < self.model_id_dropout
            ids = torch.where(mask, torch.full_like(mask, self.model_id.num_embeddings - 1, dtype=ids.dtype), ids.expand(batch_size, k))
            feats = feats.expand(batch_size, *feats.shape)
        return torch.cat([feats, self.model_id(ids)], dim=-1)

    @staticmethod
    def _pair(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """<left_b, right_(b)k> for right shaped [K, H] or [B, K, H]."""
        return left @ right.T if right.dim() == 2 else torch.einsum("bh,bkh->bk", left, right)

    def _features(self, batch: dict[str, Any]) -> torch.Tensor:
        obs = batch[Columns.OBS]
        return torch.cat([obs["embedding"], self.preference_net(obs["preference"])], dim=-1)

    def _shrunk_toward_reference(self, out: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        emb_dim = self.reference_embedding.numel()
        reference = self.decision_head(torch.cat([self.reference_embedding.expand(len(z), emb_dim), z[:, emb_dim:]], dim=-1))
        k = self.decision_shrinkage
        keep = 1.0 - (1.0 - k) * w[:, 1:] if self.decision_shrinkage_gate == "cost" else k
        return reference + keep * (out - reference)

    def _logits(self, batch: dict[str, Any], z: torch.Tensor, models: torch.Tensor | None = None,
                deciding: bool = False, dropout: float = 0.0) -> torch.Tensor:
        out = forward_with_dropout(self.decision_head, z, dropout)
        if deciding and self.decision_shrinkage < 1.0:
            out = self._shrunk_toward_reference(out, z, batch[Columns.OBS]["preference"])
        if self.head == "concat":
            return out
        w = batch[Columns.OBS]["preference"]
        if self.head == "model_conditioned":
            models = self._model_inputs(len(z), drop=False) if models is None else models
            return self._pair(out, self.model_tower(models)) - self._price_term(w, batch[Columns.OBS])
        charge = self.decision_cost_multiplier if deciding else 1.0
        if self.head == "price_aware":
            return out - charge * self._price_term(w, batch[Columns.OBS])
        if self.head == "cost_aware":
            gate = w[:, :1] if self.quality_gate else 1.0
            return gate * out - charge * self._price_term(w, batch[Columns.OBS])
        u, v = out.chunk(2, dim=-1)
        return w[:, :1] * u + w[:, 1:] * v

    def _price_term(self, w: torch.Tensor, obs: dict[str, Any]) -> torch.Tensor:
        """w_c * s * log(price) per model (cost_aware: w_c * s * normalised cost): today's prices,
        kept out of the learned weights. A batch
        may carry its own [B, K] `log_price` (the continuous trainer: the prices each logged
        decision was made under, since its reward's cost was paid at those prices)."""
        per_model = self._known_cost(obs) if self.head == "cost_aware" else obs.get(LOG_PRICE, self.log_price)
        return w[:, 1:] * nn.functional.softplus(self.price_scale) * per_model

    def _known_cost(self, obs: dict[str, Any]) -> torch.Tensor:
        """Each model's normalised training cost at these prices, capped as the reward caps it."""
        log_price = obs.get(LOG_PRICE, self.log_price)
        return torch.clamp(self.trained_cost * torch.exp(log_price - self.trained_log_price), max=1.0)

    def set_decision_shrinkage(self, keep: float, gate: str = "none") -> None:
        """How much of each prompt's own deviation from the average training prompt the routing
        decision keeps (1: all, off); a decision-time setting, so serving may change it live."""
        if self.members is not None:
            for m in self.members:
                m.set_decision_shrinkage(keep, gate)
            return
        if not 0.0 <= keep <= 1.0 or gate not in SHRINKAGE_GATES:
            raise ValueError(f"decision_shrinkage: need a share in [0, 1] and a gate 'none' or 'cost', got {keep!r}, {gate!r}")
        if keep < 1.0 and self.head == "model_conditioned":
            raise ValueError("decision_shrinkage: applies to the decision head of the other heads, not model_conditioned")
        if keep < 1.0 and not hasattr(self, "reference_embedding"):
            raise ValueError("decision_shrinkage: this checkpoint has no reference_embedding (the mean training h(x)); "
                             "retrain it with this version")
        self.decision_shrinkage, self.decision_shrinkage_gate = float(keep), gate

    def set_decision_cost_multiplier(self, multiplier: float) -> None:
        """How many times its training price the routing decision charges each model (1: off); a
        decision-time setting like the shrinkage, so serving may change it live."""
        if self.members is not None:
            for m in self.members:
                m.set_decision_cost_multiplier(multiplier)
            return
        if why := cost_multiplier_problem(multiplier, self.head):
            raise ValueError(f"decision_cost_multiplier: {why}")
        self.decision_cost_multiplier = float(multiplier)

    def set_prices(self, prices: list[float]) -> None:
        """Today's blended $/Mtok per model (price_aware, cost_aware heads): routing follows at once."""
        if self.members is not None:
            for m in self.members:
                m.set_prices(prices)
            return
        if self.head not in PRICE_HEADS:
            raise ValueError(f"head {self.head!r} does not read prices this way; {' and '.join(PRICE_HEADS)} do "
                             "(model_conditioned: offer new cards)")
        if len(prices) != self.log_price.numel() or not all(float(x) > 0 for x in prices):
            raise ValueError(f"prices: need {self.log_price.numel()} positive numbers, got {prices!r}")
        self.log_price = torch.log(torch.as_tensor(prices, dtype=torch.float32))

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """The routing decision (serving, evaluation): with decision_shrinkage, shrunk."""
        if self.members is not None:
            return {Columns.ACTION_DIST_INPUTS: self._mixture([m._forward(batch)[Columns.ACTION_DIST_INPUTS] for m in self.members])}
        return {Columns.ACTION_DIST_INPUTS: self._logits(batch, self._features(batch), deciding=True)}

    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        # Rollouts draw from the policy the loss trains, so its log-probs are the behaviour's.
        if self.members is not None:
            if self.member_data != "own":
                return {Columns.ACTION_DIST_INPUTS: self._mixture([m._forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
                                                                   for m in self.members])}
            # Round i is played by member i mod E (a draw's rows are random prompts and preferences).
            w = batch[Columns.OBS]["preference"]
            n, size = len(w), len(self.members)
            logits = w.new_empty(n, int(self.action_space.n))
            for e, m in enumerate(self.members):
                rows = torch.arange(e, n, size, device=w.device)
                logits[rows] = m._forward_exploration(self._rows(batch, rows))[Columns.ACTION_DIST_INPUTS]
            return {Columns.ACTION_DIST_INPUTS: logits, MEMBER: torch.arange(n, device=w.device) % size}
        logits = self._logits(batch, self._features(batch))
        if self.exploration_floor <= 0:
            return {Columns.ACTION_DIST_INPUTS: logits}
        k = logits.shape[-1]
        mixed = (1.0 - self.exploration_floor) * torch.softmax(logits, dim=-1) + self.exploration_floor / k
        return {Columns.ACTION_DIST_INPUTS: torch.log(mixed)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        if self.members is not None:
            n, e = len(batch[Columns.OBS]["preference"]), len(self.members)
            if MEMBER in batch:  # member_data "own": the rounds each member played
                rows = [torch.nonzero(batch[MEMBER] == i).squeeze(-1) for i in range(e)]
            elif self.training and self.member_data == "bootstrap":  # bagging: each its own resample
                rows = [torch.randint(n, (n,), device=batch[Columns.OBS]["preference"].device) for _ in range(e)]
            else:  # "shared", and logged traffic: every member learns from every round
                outs = [m._forward_train(batch) for m in self.members]
                return {Columns.ACTION_DIST_INPUTS: self._mixture([o[Columns.ACTION_DIST_INPUTS] for o in outs]), MEMBER_OUTPUTS: outs}
            outs = [m._forward_train(self._rows(batch, r)) for m, r in zip(self.members, rows)]
            return {MEMBER_OUTPUTS: outs, MEMBER_ROWS: rows}
        if self.training and self.embedding_dropout > 0:
            # Only the loss's forward: rollouts and serving see the whole embedding, so the policy
            # learns not to lean on any few of its coordinates (the ones that name a train task).
            obs = batch[Columns.OBS]
            batch = {**batch, Columns.OBS: {**obs, "embedding": nn.functional.dropout(obs["embedding"], self.embedding_dropout)}}
        z = self._features(batch)
        models = self._model_inputs(len(z), drop=self.training) if self.head == "model_conditioned" else None
        drop = self.hidden_dropout if self.training else 0.0
        out = {Columns.ACTION_DIST_INPUTS: self._logits(batch, z, models, dropout=drop)}
        if self.head == "model_conditioned" and self.critic:
            obs = batch[Columns.OBS]
            quality, cost = self.critic_tower(models).chunk(2, dim=-1)
            trunk = self.critic_trunk(obs["embedding"])
            w = obs["preference"]
            out[BASELINE] = w[:, :1] * self._pair(trunk, quality) - w[:, 1:] * self._pair(trunk, cost)
            return out
        if self.baseline_head is None:
            return out
        if self.critic and self.critic_form == "known_cost":
            obs = batch[Columns.OBS]
            w = obs["preference"]
            trained, clean = self._critic_passes(obs["embedding"], drop)
            cost = self._known_cost(obs)
            out[CRITIC_QUALITY] = clean
            out[BASELINE] = w[:, :1] * trained - w[:, 1:] * cost
            if trained is not clean:
                out[CRITIC_TARGET] = w[:, :1] * clean - w[:, 1:] * cost
        elif self.critic and self.critic_form == "reward":
            obs = batch[Columns.OBS]
            trained, clean = self._critic_passes(obs["embedding"], drop)
            quality, cost = trained.chunk(2, dim=-1)
            w = obs["preference"]
            out[BASELINE] = w[:, :1] * quality - w[:, 1:] * cost
            clean_quality, clean_cost = clean.chunk(2, dim=-1)
            out[CRITIC_QUALITY] = clean_quality
            if trained is not clean:
                out[CRITIC_TARGET] = w[:, :1] * clean_quality - w[:, 1:] * clean_cost
        else:
            b = forward_with_dropout(self.baseline_head, z, drop)
            out[BASELINE] = b if self.critic else b.squeeze(-1)
        return out

    def _critic_passes(self, embedding: torch.Tensor, drop: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(the forward the regression fits, the whole net's): with critic_dropout in training the
        critic fits through dropout on its input and hidden layers, a regularised reward model, and
        the policy is pulled toward its clean estimate; otherwise both are one pass."""
        if self.training and self.critic_dropout > 0:
            p = self.critic_dropout
            with torch.no_grad():
                clean = self.baseline_head(embedding)
            return forward_with_dropout(self.baseline_head, nn.functional.dropout(embedding, p), p), clean
        trained = forward_with_dropout(self.baseline_head, embedding, drop)
        return trained, trained

    @torch.no_grad()
    def critic_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, K] the critic's reward estimate of every model, for scoring logged rounds doubly robustly
        (the safe-rollout gate). An ensemble's mixture has no critic of its own: its members' mean."""
        if self.members is not None:
            return torch.stack([m._forward_train({Columns.OBS: obs})[BASELINE] for m in self.members]).mean(0)
        return self._forward_train({Columns.OBS: obs})[BASELINE]

    def get_non_inference_attributes(self) -> list[str]:
        own = ["baseline_head", "critic_trunk", "critic_tower"]
        if self.members is not None:
            return [f"members.{i}.{a}" for i in range(len(self.members)) for a in own]
        return own

    @torch.no_grad()
    def action_probabilities(self, embedding: torch.Tensor, preference: torch.Tensor,
                             log_price: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax over models for a batch; the one call serving and evaluation need (`log_price`:
        [B, K] per-row prices instead of the offered ones, as in `_price_term`)."""
        obs = {"embedding": embedding, "preference": preference}
        if log_price is not None:
            obs[LOG_PRICE] = log_price
        logits = self._forward({Columns.OBS: obs})
        return torch.softmax(logits[Columns.ACTION_DIST_INPUTS], dim=-1)
