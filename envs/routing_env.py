"""The routing task as a one-step contextual bandit.

Each round draws a logged prompt and a preference w; the agent names one of K models and
receives only that model's reward. The full score/cost matrices live inside `BanditData`
and never leave the environment: not in observations, not in `info`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from envs.preference import PreferenceSampler
from envs.reward import reward


@dataclass(frozen=True)
class BanditData:
    """What the simulator needs from a routing table: cached prompt embeddings plus the hidden outcomes."""

    embeddings: np.ndarray  # [N, D] float32: unit-norm h(x) (MiniLM normalises), then any text statistics
    scores: np.ndarray  # [N, K] float32
    costs: np.ndarray  # [N, K] float64 dollars
    models: tuple[str, ...]
    weights: np.ndarray | None = None  # [N] chance of each prompt per round (None: uniform)

    def __post_init__(self) -> None:
        n = self.embeddings.shape[0]
        if self.scores.shape != (n, len(self.models)) or self.costs.shape != self.scores.shape:
            raise ValueError(
                f"BanditData: embeddings {self.embeddings.shape}, scores {self.scores.shape}, "
                f"costs {self.costs.shape} and {len(self.models)} models do not line up"
            )
        if self.weights is not None and (self.weights.shape != (n,) or not np.isclose(self.weights.sum(), 1.0)
                                         or (self.weights < 0).any()):
            raise ValueError(f"BanditData: weights must be {n} non-negative numbers summing to 1")


def task_balanced(tasks: np.ndarray) -> np.ndarray:
    """Per-prompt draw chances that give every task the same share of rounds (uniform within a task):
    a task with few logged prompts is otherwise seen in proportion to them, however often it is asked."""
    names, index, counts = np.unique(np.asarray(tasks), return_inverse=True, return_counts=True)
    weights = 1.0 / (len(names) * counts[index])
    return weights / weights.sum()


def prompt_weights(tasks: np.ndarray, sampling: str) -> np.ndarray | None:
    """The draw chances `env.prompt_sampling` asks for (None: uniform over prompts)."""
    return task_balanced(tasks) if sampling == "per_task" else None


def resolve_data(data: Any) -> BanditData:
    """Env configs may carry the data itself or a Ray ObjectRef to it (shared, zero-copy, across runners)."""
    if isinstance(data, BanditData):
        return data
    import ray

    if isinstance(data, ray.ObjectRef):
        return ray.get(data)
    raise TypeError(f"env_config['data'] must be BanditData or a ray.ObjectRef to it, got {type(data).__name__}")


class BanditRounds:
    """Vectorised core: draw n rounds, score n actions. Shared by the gym env and the batched EnvRunner."""

    def __init__(self, data: BanditData, tau: float, preference: PreferenceSampler, seed: int | None = None):
        if tau <= 0:
            raise ValueError(f"env.tau must be > 0, got {tau}")
        self.data = data
        self.tau = float(tau)
        self.preference = preference
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Row indices (kept private by the caller) and the observation batch."""
        if self.data.weights is None:
            rows = self.rng.integers(self.data.embeddings.shape[0], size=n)
        else:
            rows = self.rng.choice(self.data.embeddings.shape[0], size=n, p=self.data.weights)
        obs = {"embedding": self.data.embeddings[rows], "preference": self.preference.sample(self.rng, n)}
        return rows, obs

    def step(self, rows: np.ndarray, preference: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Bandit feedback: the reward of the chosen model only."""
        q = self.data.scores[rows, actions]
        c = self.data.costs[rows, actions]
        return reward(q, c, preference[:, 0], preference[:, 1], self.tau).astype(np.float32)


def observation_space(dim: int, bound: float = 1.0) -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {
            "embedding": gym.spaces.Box(-bound, bound, shape=(dim,), dtype=np.float32),
            "preference": gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32),
        }
    )


def load_world(config_file: str | None = None, split: str = "train") -> tuple[BanditData, float, dict]:
    """The data, tau and preference sampler of a barp-ray YAML config (None: the embedded synthetic
    world), prompts encoded with its MiniLM once and cached, as training does."""
    from barp_ray.config import load_config
    from barp_ray.data.prepare import prepare

    if split not in ("train", "test"):
        raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
    cfg = load_config(config_file)
    prepared = prepare(cfg)
    table = prepared.train if split == "train" else prepared.test
    emb = prepared.train_embeddings if split == "train" else prepared.test_embeddings
    data = BanditData(emb, table.scores, table.costs, table.models, prompt_weights(table.tasks, cfg.env.prompt_sampling))
    return data, float(prepared.tau), dict(cfg.env.preference)


class RoutingBanditEnv(gym.Env):
    """The routing bandit. RLlib passes an env_config dict: data (BanditData or ObjectRef), tau,
    preference (dict), seed. Gymnasium users pass nothing (the embedded synthetic world) or
    `config="configs/llmrouter.yaml"` (a barp-ray YAML: its data, tau and preference sampler),
    optionally `split="test"`; tau, preference and seed may be given to override the YAML's."""

    metadata: dict = {"render_modes": []}

    def __init__(self, config: dict | str | None = None, **kwargs: Any):
        if config is not None and not isinstance(config, dict):
            config, kwargs = {}, {"config_file": str(config), **kwargs}
        config = {**(config or {}), **kwargs}
        if "data" not in config:
            world, tau, preference = load_world(config.get("config_file"), config.get("split", "train"))
            config = {"tau": tau, "preference": preference, **config, "data": world}
        data = resolve_data(config["data"])
        self._rounds = BanditRounds(
            data,
            tau=float(config.get("tau", 1.0)),
            preference=PreferenceSampler.from_dict(config.get("preference")),
            seed=config.get("seed"),
        )
        self.models = data.models
        # h(x) is unit-norm; text statistics after it (encoder.text_stats) reach a few units
        bound = max(1.0, float(np.ceil(np.abs(data.embeddings).max()))) if data.embeddings.size else 1.0
        self.observation_space = observation_space(data.embeddings.shape[1], bound)
        self.action_space = gym.spaces.Discrete(len(data.models))
        self._row: np.ndarray | None = None
        self._obs: dict[str, np.ndarray] | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rounds.rng = np.random.default_rng(seed)
        rows, obs = self._rounds.draw(1)
        self._row = rows
        self._obs = {k: v[0] for k, v in obs.items()}
        return self._obs, {}

    def step(self, action):
        if self._row is None:
            raise RuntimeError("step() called before reset()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n}), got {action!r}")
        r = self._rounds.step(self._row, self._obs["preference"][None], np.asarray([int(action)]))[0]
        obs, self._row = self._obs, None
        # One round per episode. info stays empty on purpose: no other model's outcome may leak.
        return obs, float(r), True, False, {}


ENV_ID = "barp/Routing-v0"


def register() -> None:
    """Register under a gymnasium id (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="envs.routing_env:RoutingBanditEnv", disable_env_checker=True)
