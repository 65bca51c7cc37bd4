"""Evaluation settings: one typed dataclass (`EvalConfig`), read from the `eval:` section of a YAML file.

Kept apart from the training config because the training config is a checkpoint's identity
(it is stored in barp_meta.json), while these knobs only decide how routers are compared.
Every value is validated at load and every error names the field: `eval.seeds: must be > 0, got 0`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import yaml

from barp_ray.config import POLICY_HEADS, ConfigError, _build_section, read_yaml
from envs.preference import check_simplex

SECTION = "eval"


@dataclass
class EvalConfig:
    seeds: int = 3  # BaRP trainings (and seeded baselines) per evaluation; results are mean ± std over them
    sweep_points: int = 11  # preferences w = (w_q, 1 - w_q), w_q evenly spaced over [0, 1]
    default_preference: Union[list, None] = None  # None: the training config's env.eval_preference
    validation_fraction: float = 0.1  # carved from train; offline routers choose hyper-parameters on it
    knn_k: list = field(default_factory=lambda: [5, 10, 20, 50, 100])  # candidates, chosen on validation
    mlp_hidden: int = 256
    mlp_lr: float = 1e-3
    mlp_max_epochs: int = 200
    mlp_patience: int = 10  # epochs without a better validation loss before stopping
    bandit_rounds: Union[int, str] = "same"  # "same": BaRP's iterations x rounds_per_iteration
    bandit_batch: int = 4096  # rounds played between two ridge updates
    bandit_dims: int = 64  # principal directions of the embedding the linear bandits use
    bandit_ridge: float = 1.0
    epsilon: float = 0.1
    ucb_alpha: float = 0.5
    thompson_scale: float = 0.3
    largest_model: str = "auto"  # "auto": most parameters where the data says (LLMRouter), else priciest
    checkpoint_root: str = "checkpoints/eval"  # BaRP checkpoints trained by `barp eval` go under here
    compare_heads: list = field(default_factory=list)  # other policy.head values trained and scored in the same run: rows "BaRP (<head>)"

    def validate(self) -> "EvalConfig":
        _positive("seeds", self.seeds)
        if self.sweep_points < 2:
            raise ConfigError(f"eval.sweep_points: must be >= 2 (w_q = 0 and 1 at least), got {self.sweep_points}")
        if self.default_preference is not None:
            try:
                check_simplex(self.default_preference, "eval.default_preference")
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"eval.validation_fraction: must be in (0, 1), got {self.validation_fraction}")
        if not self.knn_k or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in self.knn_k):
            raise ConfigError(f"eval.knn_k: must be a non-empty list of positive integers, got {self.knn_k!r}")
        for name in ("mlp_hidden", "mlp_max_epochs", "mlp_patience", "bandit_batch", "bandit_dims"):
            _positive(name, getattr(self, name))
        for name in ("mlp_lr", "bandit_ridge", "ucb_alpha", "thompson_scale"):
            _positive(name, getattr(self, name))
        if not 0 <= self.epsilon <= 1:
            raise ConfigError(f"eval.epsilon: must be in [0, 1], got {self.epsilon}")
        if not isinstance(self.compare_heads, list) or len(set(map(str, self.compare_heads))) != len(self.compare_heads):
            raise ConfigError(f"eval.compare_heads: must be a list of distinct policy heads, got {self.compare_heads!r}")
        for head in self.compare_heads:
            if head not in POLICY_HEADS:
                raise ConfigError(f"eval.compare_heads: {head!r} is not a policy head (one of {', '.join(POLICY_HEADS)})")
        if isinstance(self.bandit_rounds, str):
            if self.bandit_rounds != "same":
                raise ConfigError(f"eval.bandit_rounds: must be a positive integer or 'same', got {self.bandit_rounds!r}")
        else:
            _positive("bandit_rounds", self.bandit_rounds)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def eval_config_from_dict(raw, where: str = "eval config") -> EvalConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict) or set(raw) - {SECTION}:
        raise ConfigError(f"{where}: top level must be a single '{SECTION}:' section")
    return _build_section(EvalConfig, raw.get(SECTION) or {}, SECTION).validate()


def load_eval_config(path: str | Path | None) -> EvalConfig:
    """None -> the defaults above."""
    if path is None:
        return EvalConfig().validate()
    return eval_config_from_dict(read_yaml(Path(path), "eval config file"), where=str(path))


def apply_eval_overrides(cfg: EvalConfig, overrides: list[str]) -> EvalConfig:
    """`eval.field=value` strings; values parsed as YAML scalars/lists."""
    raw = cfg.to_dict()
    for item in overrides:
        key, _, value = item.partition("=")
        name = key.split(".", 1)[1] if key.startswith(f"{SECTION}.") else ""
        if not _ or not name:
            raise ConfigError(f"override {item!r}: expected eval.field=value")
        raw[name] = yaml.safe_load(value)
    return eval_config_from_dict({SECTION: raw}, where="overrides")


def _positive(name: str, v) -> None:
    if not v > 0:
        raise ConfigError(f"eval.{name}: must be > 0, got {v}")
