"""Offline routers trained with *full information*: every model's score on every training prompt.

These are the supervised routers the routing literature compares against (kNN, a score
predictor, a best-model classifier). BaRP never gets this information, so they are an
advantaged comparison; tables label them "full information".

All three see the train split only. Hyper-parameters (kNN's k, MLP early stopping) are chosen on
a validation split carved from train (`TrainView.val_index`), never on the test prompts.
Cost: the score is predicted per prompt, the cost is each model's *known mean normalised cost*
on train, min(c/tau, 1) averaged over prompts (prices are public). A prompt's own cost varies (sd ~35 %
of the mean on LLMRouter), but charging it moves these routers' sweep reward by +0.0000 +- 0.0007
(docs/results/preference_range_val/per_prompt_cost.py).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from barp_ray.evaluation.baselines.base import FULL_INFO, Router, argmax_choice, predicted_reward
from envs.reward import normalized_cost, reward


@dataclass(frozen=True)
class TrainView:
    """The labelled train split as offline routers see it, with a fixed fit/validation partition."""

    embeddings: np.ndarray  # [N, D]
    scores: np.ndarray  # [N, K]
    costs: np.ndarray  # [N, K] dollars
    tau: float
    fit_index: np.ndarray
    val_index: np.ndarray

    @classmethod
    def build(cls, embeddings, scores, costs, tau: float, validation_fraction: float, seed: int) -> "TrainView":
        n = len(embeddings)
        order = np.random.default_rng(seed).permutation(n)
        n_val = max(1, int(round(n * validation_fraction)))
        if n_val >= n:
            raise ValueError(f"validation_fraction {validation_fraction} leaves nothing to fit on {n} prompts")
        return cls(
            np.asarray(embeddings, dtype=np.float32),
            np.asarray(scores, dtype=np.float64),
            np.asarray(costs, dtype=np.float64),
            float(tau),
            np.sort(order[n_val:]),
            np.sort(order[:n_val]),
        )

    def mean_normalized_cost(self) -> np.ndarray:
        """[K] each model's mean min(c/tau, 1) over all train prompts: the 'known cost' of a model."""
        return normalized_cost(self.costs, self.tau).mean(axis=0)

    def reward(self, preference, rows=None) -> np.ndarray:
        rows = slice(None) if rows is None else rows
        return reward(self.scores[rows], self.costs[rows], preference[0], preference[1], self.tau)


class _MemoPredictions:
    """Score predictions are preference-free; cache them for the one embedding array a sweep reuses."""

    def __init__(self):
        self._key = None
        self._value = None

    def get(self, embeddings, compute):
        key = (id(embeddings), embeddings.shape)
        if key != self._key:
            self._key, self._value = key, compute(embeddings)
        return self._value


def knn_mean(query: np.ndarray, index: np.ndarray, values: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Mean of `values` over each query's k most cosine-similar index rows (embeddings are unit-norm)."""
    k = min(k, len(index))
    out = np.empty((len(query), values.shape[1]))
    for i in range(0, len(query), chunk):
        sims = query[i : i + chunk] @ index.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[i : i + chunk] = values[top].mean(axis=1)
    return out


class KNNRouter(Router):
    """Predict each model's score as the mean over the k nearest training prompts; pick the best reward for w."""

    name = "kNN"
    family = FULL_INFO

    def __init__(self, candidates=(5, 10, 20, 50, 100), dims: int | None = None):
        self.candidates = tuple(int(k) for k in candidates)
        self.dims = dims  # compare the first `dims` columns (h(x) alone when text statistics follow it)
        self.k: int | None = None
        self.validation: dict[int, float] = {}
        self._memo = _MemoPredictions()

    def fit(self, view: TrainView, preferences) -> "KNNRouter":
        e = view.embeddings[:, : self.dims]
        fit_e, val_e = e[view.fit_index], e[view.val_index]
        cost_hat = normalized_cost(view.costs[view.fit_index], view.tau).mean(axis=0)
        val_rows = np.arange(len(view.val_index))
        for k in self.candidates:
            q_hat = knn_mean(val_e, fit_e, view.scores[view.fit_index], k)
            self.validation[k] = float(
                np.mean(
                    [
                        view.reward(w, view.val_index)[val_rows, predicted_reward(q_hat, cost_hat, w).argmax(1)].mean()
                        for w in preferences
                    ]
                )
            )
        self.k = max(self.validation, key=self.validation.get)
        self.name = f"kNN (k={self.k})"
        self._index, self._scores = e, view.scores  # refit on all of train
        self._cost_hat = view.mean_normalized_cost()
        return self

    def predict_scores(self, embeddings: np.ndarray) -> np.ndarray:
        return self._memo.get(embeddings, lambda e: knn_mean(e[:, : self.dims], self._index, self._scores, self.k))

    def choose(self, embeddings, preference):
        return argmax_choice(predicted_reward(self.predict_scores(embeddings), self._cost_hat, preference))


@dataclass(frozen=True)
class MLPSettings:
    hidden: int = 256
    lr: float = 1e-3
    max_epochs: int = 200
    patience: int = 10
    batch_size: int = 128
    weight_decay: float = 1e-5


def train_mlp(x_fit, y_fit, x_val, y_val, loss: str, settings: MLPSettings, seed: int):
    """One-hidden-layer MLP, Adam, early stopping on validation loss; returns the best-on-validation net.

    loss: "bce" (independent sigmoid outputs, soft targets in [0, 1]) or "soft_ce" (softmax over
    outputs, targets are distributions).
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xf, yf = torch.as_tensor(x_fit, dtype=torch.float32), torch.as_tensor(y_fit, dtype=torch.float32)
    xv, yv = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(y_val, dtype=torch.float32)
    net = nn.Sequential(nn.Linear(xf.shape[1], settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, yf.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def loss_of(logits, y):
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, y)
        return -(y * F.log_softmax(logits, dim=-1)).sum(-1).mean()

    best, best_state, since = float("inf"), None, 0
    for _ in range(settings.max_epochs):
        net.train()
        perm = torch.randperm(len(xf), generator=gen)
        for i in range(0, len(xf), settings.batch_size):
            idx = perm[i : i + settings.batch_size]
            opt.zero_grad()
            loss_of(net(xf[idx]), yf[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = float(loss_of(net(xv), yv))
        if v < best - 1e-6:
            best, since = v, 0
            best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
        else:
            since += 1
            if since >= settings.patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    return net


def _forward(net, embeddings: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(torch.as_tensor(np.asarray(embeddings, dtype=np.float32))).numpy().astype(np.float64)


class ScoreMLPRouter(Router):
    """Regress every model's score from the embedding (sigmoid outputs, BCE); pick the best predicted reward for w."""

    name = "score MLP"
    family = FULL_INFO

    def __init__(self, settings: MLPSettings = MLPSettings()):
        self.settings = settings
        self._memo = _MemoPredictions()

    def fit(self, view: TrainView, preferences=None, seed: int = 0) -> "ScoreMLPRouter":
        f, v = view.fit_index, view.val_index
        self.net = train_mlp(
            view.embeddings[f], view.scores[f], view.embeddings[v], view.scores[v], "bce", self.settings, seed
        )
        self._cost_hat = view.mean_normalized_cost()
        return self

    def predict_scores(self, embeddings: np.ndarray) -> np.ndarray:
        return self._memo.get(embeddings, lambda e: 1.0 / (1.0 + np.exp(-_forward(self.net, e))))

    def choose(self, embeddings, preference):
        return argmax_choice(predicted_reward(self.predict_scores(embeddings), self._cost_hat, preference))


def best_label_targets(rewards: np.ndarray, atol: float = 1e-9) -> np.ndarray:
    """Per prompt, a uniform distribution over the models that tie for the best reward."""
    best = rewards.max(axis=1, keepdims=True)
    hit = (rewards >= best - atol).astype(np.float64)
    return hit / hit.sum(axis=1, keepdims=True)


def preference_key(preference) -> float:
    return round(float(preference[0]), 6)


class BestLabelRouter(Router):
    """One classifier per preference w, trained on the label 'which model earns the most reward at w'.

    This is the RouterDC / best-label family; each w on the sweep is its own knob setting with its
    own classifier (ties between equally good models become a uniform soft label).
    """

    name = "best-label classifier"
    family = FULL_INFO

    def __init__(self, settings: MLPSettings = MLPSettings()):
        self.settings = settings
        self.nets: dict[float, object] = {}

    def fit(self, view: TrainView, preferences, seed: int = 0, progress: bool = False) -> "BestLabelRouter":
        from tqdm import tqdm

        f, v = view.fit_index, view.val_index
        for w in tqdm(list(preferences), desc="best-label classifiers", unit="w", leave=False, disable=not progress, file=sys.stderr, mininterval=1.0):
            y = best_label_targets(view.reward(w))
            self.nets[preference_key(w)] = train_mlp(
                view.embeddings[f], y[f], view.embeddings[v], y[v], "soft_ce", self.settings, seed
            )
        return self

    def choose(self, embeddings, preference):
        key = preference_key(preference)
        if key not in self.nets:
            raise ValueError(f"best-label router has no classifier for w_q={key}; trained for {sorted(self.nets)}")
        return argmax_choice(_forward(self.nets[key], embeddings))
