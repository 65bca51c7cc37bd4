"""Linear contextual bandits trained with the same partial feedback as BaRP: ε-greedy, LinUCB, linear Thompson sampling.

They learn only by playing the routing environment (`envs.routing_env.BanditRounds`): `draw(n)`
hands out n rounds (an opaque row token plus the observation {embedding, preference}), `step`
returns the reward of the chosen model and nothing else. `train_bandit` calls those two methods
and nothing more, so these learners cannot see the outcome of a model they did not pick.

Features. The reward is r = w_q*q_k(x) - w_c*c_k(x) with c_k the normalised cost. If each model's
score and cost were linear in a prompt feature g(x) (q_k = a_k.g, c_k = d_k.g) then
r = a_k.(w_q*g) - d_k.(w_c*g): exactly linear in the per-arm feature

    phi(x, w) = [w_q * g(x) ; w_c * g(x)],   g(x) = [P (h(x) - mu) ; 1]

so one ridge model per arm (disjoint LinUCB) represents preference-dependent rewards with no
interaction terms to guess. h(x) is the same frozen MiniLM embedding BaRP uses; P projects it on
its top `dims` principal directions (fitted on the embeddings of the first batch of observations,
i.e. on what the env shows, no labels), because per-arm ridge statistics cost O(d^2) per round
and 2*(384+1) = 770 features would make LinUCB's confidence widths ~35x slower than 2*(64+1).

Updates are batched: a batch of rounds is played with the parameters from before it, then the
ridge statistics are updated and re-solved (BaRP likewise updates once per batch of rounds).
At evaluation every learner routes greedily on its ridge estimate (no exploration).
"""
from __future__ import annotations

import sys
from typing import Protocol

import numpy as np

from barp_ray.evaluation.baselines.base import BANDIT, Router, argmax_choice


class BanditFeedback(Protocol):
    """All a bandit learner may touch: the env's draw and step."""

    def draw(self, n: int): ...

    def step(self, rows, preference, actions): ...


class PreferenceFeatures:
    """phi(x, w) = [w_q*g ; w_c*g] with g = [P(h - mu) ; 1]; P from PCA of observed embeddings."""

    def __init__(self, dims: int):
        self.dims = int(dims)
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None

    @property
    def size(self) -> int:
        return 2 * (self.dims + 1)

    def fit(self, embeddings: np.ndarray) -> "PreferenceFeatures":
        x = np.asarray(embeddings, dtype=np.float64)
        if self.dims > x.shape[1]:
            raise ValueError(f"bandit feature dims {self.dims} exceed the embedding size {x.shape[1]}")
        self.mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.projection = vt[: self.dims].T  # [D, dims]
        return self

    def __call__(self, embeddings: np.ndarray, preference: np.ndarray) -> np.ndarray:
        g = (np.asarray(embeddings, dtype=np.float64) - self.mean) @ self.projection
        g = np.concatenate([g, np.ones((len(g), 1))], axis=1)
        w = np.asarray(preference, dtype=np.float64).reshape(-1, 2)
        if len(w) == 1:
            w = np.broadcast_to(w, (len(g), 2))
        return np.concatenate([w[:, :1] * g, w[:, 1:] * g], axis=1)


class RidgeArms:
    """Per-arm ridge regression statistics A_k = lambda*I + sum phi phi^T, b_k = sum r phi."""

    def __init__(self, k: int, d: int, ridge: float):
        self.A = np.repeat(np.eye(d)[None] * ridge, k, axis=0)
        self.b = np.zeros((k, d))
        self.solve()

    def solve(self) -> None:
        self.A_inv = np.linalg.inv(self.A)
        self.theta = np.einsum("kij,kj->ki", self.A_inv, self.b)

    def update(self, phi: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        for a in np.unique(actions):
            m = actions == a
            self.A[a] += phi[m].T @ phi[m]
            self.b[a] += phi[m].T @ rewards[m]
        self.solve()

    def means(self, phi: np.ndarray) -> np.ndarray:
        """[B, K] predicted reward per arm."""
        return phi @ self.theta.T

    def widths(self, phi: np.ndarray) -> np.ndarray:
        """[B, K] sqrt(phi^T A_k^-1 phi): the per-arm confidence width."""
        out = np.empty((len(phi), len(self.A)))
        phi32, inv32 = phi.astype(np.float32), self.A_inv.astype(np.float32)  # widths only steer exploration
        for a in range(len(self.A)):
            out[:, a] = np.einsum("bi,bi->b", phi32 @ inv32[a], phi32)
        return np.sqrt(np.maximum(out, 0.0))


class LinearBandit(Router):
    """Shared machinery; subclasses decide how to explore while training (`explore`)."""

    family = BANDIT

    def __init__(self, n_actions: int, dims: int = 64, ridge: float = 1.0, seed: int = 0):
        self.n_actions = int(n_actions)
        self.features = PreferenceFeatures(dims)
        self.ridge = float(ridge)
        self.rng = np.random.default_rng(seed)
        self.arms: RidgeArms | None = None
        self.rounds_seen = 0

    def explore(self, phi: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def observe(self, phi: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        self.arms.update(phi, actions, np.asarray(rewards, dtype=np.float64))
        self.rounds_seen += len(actions)

    def start(self, first_embeddings: np.ndarray) -> None:
        self.features.fit(first_embeddings)
        self.arms = RidgeArms(self.n_actions, self.features.size, self.ridge)

    def choose(self, embeddings, preference):
        if self.arms is None:
            raise RuntimeError(f"{self.name}: train it before routing")
        return argmax_choice(self.arms.means(self.features(embeddings, np.asarray(preference))))


class EpsilonGreedy(LinearBandit):
    name = "ε-greedy (linear)"

    def __init__(self, n_actions: int, epsilon: float = 0.1, **kw):
        super().__init__(n_actions, **kw)
        self.epsilon = float(epsilon)

    def explore(self, phi):
        greedy = self.arms.means(phi).argmax(axis=1)
        random = self.rng.integers(self.n_actions, size=len(phi))
        return np.where(self.rng.random(len(phi)) < self.epsilon, random, greedy)


class LinUCB(LinearBandit):
    name = "LinUCB"

    def __init__(self, n_actions: int, alpha: float = 0.5, **kw):
        super().__init__(n_actions, **kw)
        self.alpha = float(alpha)

    def explore(self, phi):
        return (self.arms.means(phi) + self.alpha * self.arms.widths(phi)).argmax(axis=1)


class LinearThompson(LinearBandit):
    """Per round, each arm's reward is sampled from its Gaussian posterior N(theta.phi, v^2 phi^T A^-1 phi).

    Sampling the scalar directly is exactly what drawing theta ~ N(theta_hat, v^2 A^-1) per round
    and taking theta.phi gives, at the cost of a width instead of a d-dimensional draw.
    """

    name = "linear Thompson"

    def __init__(self, n_actions: int, scale: float = 0.3, **kw):
        super().__init__(n_actions, **kw)
        self.scale = float(scale)

    def explore(self, phi):
        noise = self.rng.standard_normal((len(phi), self.n_actions))
        return (self.arms.means(phi) + self.scale * self.arms.widths(phi) * noise).argmax(axis=1)


def train_bandit(learner: LinearBandit, env: BanditFeedback, rounds: int, batch: int, progress: bool = False) -> LinearBandit:
    """Play `rounds` rounds of the env in batches; only env.draw and env.step are ever called."""
    from tqdm import tqdm

    if rounds <= 0 or batch <= 0:
        raise ValueError(f"rounds and batch must be > 0, got {rounds} and {batch}")
    with tqdm(total=rounds, desc=learner.name, unit="round", unit_scale=True, leave=False, disable=not progress, file=sys.stderr, mininterval=1.0) as bar:
        done = 0
        while done < rounds:
            n = min(batch, rounds - done)
            rows, obs = env.draw(n)
            if learner.arms is None:
                learner.start(obs["embedding"])
            phi = learner.features(obs["embedding"], obs["preference"])
            actions = learner.explore(phi)
            rewards = env.step(rows, obs["preference"], actions)
            learner.observe(phi, actions, rewards)
            done += n
            bar.update(n)
    return learner
