"""Paired bootstrap over the test prompts: is BaRP's reward at a preference really above or below another router's?

At one preference two good routers often differ by a few thousandths of reward, less than what a
few hundred test prompts can resolve, so "BaRP ≥ kNN at k of 11 preferences" on mean rewards
partly counts coin flips. Every router is scored on the same prompts, so the difference is taken
per prompt (seed s of BaRP against seed s of the other, then averaged over seeds) and the prompts
are resampled with replacement. The interval covers the test sample, not the seeds' spread (that
is the ± of the other tables).
"""
from __future__ import annotations

import numpy as np


def paired_bootstrap(diff: np.ndarray, rounds: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """diff: [preferences, prompts] of per-prompt reward differences. Mean and percentile interval per preference."""
    diff = np.asarray(diff, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.shape[1], size=(rounds, diff.shape[1]))  # the same resamples at every preference
    tail = 100 * (1 - level) / 2
    low, high = [], []
    for row in diff:
        means = row[idx].mean(axis=1)
        low.append(float(np.percentile(means, tail)))
        high.append(float(np.percentile(means, 100 - tail)))
    return {"mean": diff.mean(axis=1).tolist(), "low": low, "high": high, "level": level, "rounds": rounds}


def compare_to_barp(per_prompt: dict[str, np.ndarray], names: list[str], **kw) -> dict[str, dict]:
    """per_prompt: router -> [seeds, preferences, prompts] of rewards; a deterministic router may have
    one seed, set against every BaRP seed."""
    barp = per_prompt["BaRP"]
    out = {}
    for name in names:
        other = per_prompt[name]
        if other.shape[0] not in (1, barp.shape[0]):
            raise ValueError(f"{name}: {other.shape[0]} seeds against BaRP's {barp.shape[0]}")
        out[name] = paired_bootstrap((barp - other).mean(axis=0), **kw)
    return out


def single_per_preference(per_prompt: dict[str, np.ndarray], picks: list[str]) -> np.ndarray:
    """[1, preferences, prompts]: at preference i, the rewards of the single model picks[i]."""
    return np.stack([per_prompt[name][0][i] for i, name in enumerate(picks)])[None]


def best_single_per_preference(per_prompt: dict[str, np.ndarray], singles: list[str]) -> np.ndarray:
    """[1, preferences, prompts]: at each preference, the rewards of the single model with the best mean
    there (chosen on these test prompts, as the goal's bar is)."""
    stack = np.stack([per_prompt[n][0] for n in singles])  # [models, preferences, prompts]
    return single_per_preference(per_prompt, [singles[b] for b in stack.mean(axis=2).argmax(axis=0)])
