"""Figures derived from an evaluation's raw operating points, and the JSON file that holds both.

`derive(raw)` adds, without touching the raw points:
* `cost_range` (cheapest and priciest single model's mean test cost) and `gap_targets` (the
  quality levels of the call-performance figure), see `barp_ray.evaluation.metrics`;
* per router: mean ± std over seeds of reward/quality/cost at every preference, AIQ, cost to reach
  50 %/80 % of the cheapest-to-best single-model gap, per-task figures at the default preference;
* `summary`: BaRP's relative improvement at the default preference over the best full-information
  router (the best of them on the test prompts, per seed: the comparison least favourable to
  BaRP), over the largest model, over the best single model and over the best bandit baseline,
  as relative differences (ours - theirs) / |theirs| of mean reward and of mean score;
* `dominance`: per other learned router, at how many sweep preferences BaRP's mean reward is at
  least as high, and over what fraction of the cost range BaRP's hull is at least as high.

std is the sample standard deviation over seeds (0 with one seed).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from barp_ray.evaluation.baselines.base import BANDIT, FULL_INFO, SINGLE
from barp_ray.evaluation.metrics import aiq, call_performance, gap_targets, hull_dominance, relative_difference


class ResultsError(ValueError):
    """A results file cannot be read back; the message names the file and the problem."""


METRICS = ("reward", "quality", "cost")


def mean_std(values) -> list[float]:
    """[mean, sample std] ignoring NaN (a target a seed never reached); [nan, nan] if all are NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return [float("nan"), float("nan")]
    return [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]


def _matrix(entry: dict, metric: str) -> np.ndarray:
    """[seeds, preferences] of one metric."""
    return np.asarray([[p[metric] for p in run["points"]] for run in entry["runs"]], dtype=np.float64)


def derive(raw: dict) -> dict:
    res = dict(raw)
    routers = res["routers"]
    prefs = [tuple(w) for w in res["preferences"]]
    di = prefs.index(tuple(res["default_preference"]))
    singles = {n: e for n, e in routers.items() if e["family"] == SINGLE}
    if not singles or "BaRP" not in routers:
        raise ResultsError("results need BaRP and at least one single model")
    s_cost = np.asarray([_matrix(e, "cost")[0, di] for e in singles.values()])
    s_quality = np.asarray([_matrix(e, "quality")[0, di] for e in singles.values()])
    cost_range = (float(s_cost.min()), float(s_cost.max()))
    targets = gap_targets(s_cost, s_quality)
    res["cost_range"] = list(cost_range)
    res["gap_targets"] = {str(f): q for f, q in targets.items()}

    for entry in routers.values():
        cost, quality = _matrix(entry, "cost"), _matrix(entry, "quality")
        stats = {m: [mean_std(col) for col in _matrix(entry, m).T] for m in METRICS}
        aiqs = [aiq(c, q, cost_range) for c, q in zip(cost, quality)]
        reach = [call_performance(c, q, targets) for c, q in zip(cost, quality)]
        stats["aiq"] = mean_std(aiqs)
        stats["aiq_per_seed"] = aiqs
        for f in targets:
            per_seed = [r[f] for r in reach]
            stats[f"cost_to_{int(round(f * 100))}"] = mean_std(per_seed)
            stats[f"reached_{int(round(f * 100))}"] = int(np.isfinite(per_seed).sum())
        tasks = entry["runs"][0]["per_task"].keys()
        stats["per_task"] = {
            t: {m: mean_std([run["per_task"][t][m] for run in entry["runs"]]) for m in METRICS} for t in tasks
        }
        if all("unseen" in run for run in entry["runs"]):
            stats["unseen"] = {m: mean_std([run["unseen"][m] for run in entry["runs"]]) for m in METRICS}
        entry["stats"] = stats

    res["summary"] = _summary(res, di)
    res["dominance"] = _dominance(res, cost_range)
    return res


def _at_default(entry: dict, metric: str, di: int) -> np.ndarray:
    return _matrix(entry, metric)[:, di]


def _summary(res: dict, di: int) -> dict:
    routers = res["routers"]
    barp = {m: _at_default(routers["BaRP"], m, di) for m in ("reward", "quality")}
    n = len(barp["reward"])

    def best_of(family: str) -> list[str]:
        names = [k for k, e in routers.items() if e["family"] == family]
        if not names:
            return []
        table = np.stack([_at_default(routers[k], "reward", di) for k in names])  # [routers, seeds]
        return [names[i] for i in table.argmax(axis=0)]

    comparators = {
        "best_full_information_router": best_of(FULL_INFO),
        "largest_model": [res["data"]["largest_model"]] * n,
        "best_single_model": best_of(SINGLE),
        "best_bandit_baseline": best_of(BANDIT),
    }
    out = {"preference": res["default_preference"], "seeds": n}
    for label, names in comparators.items():
        if not names:
            continue
        row = {"router_per_seed": names}
        for m in ("reward", "quality"):
            theirs = np.asarray([_at_default(routers[name], m, di)[s] for s, name in enumerate(names)])
            rel = [relative_difference(a, b) for a, b in zip(barp[m], theirs)]
            row[m] = {"barp": mean_std(barp[m]), "theirs": mean_std(theirs), "relative": mean_std(rel), "relative_per_seed": rel}
        out[label] = row
    return out


def _mean_curve(entry: dict) -> tuple[np.ndarray, np.ndarray]:
    return _matrix(entry, "cost").mean(axis=0), _matrix(entry, "quality").mean(axis=0)


def _dominance(res: dict, cost_range) -> dict:
    routers = res["routers"]
    prefs = res["preferences"]
    barp_reward = _matrix(routers["BaRP"], "reward").mean(axis=0)
    out = {}
    for name, entry in routers.items():
        if entry["family"] not in (FULL_INFO, BANDIT):
            continue
        theirs = _matrix(entry, "reward").mean(axis=0)
        wins = barp_reward >= theirs - 1e-12
        out[name] = {
            "family": entry["family"],
            "reward_wins": int(wins.sum()),
            "preferences": len(prefs),
            "loses_at_wq": [prefs[i][0] for i in np.flatnonzero(~wins)],
            "hull_fraction": hull_dominance(_mean_curve(routers["BaRP"]), _mean_curve(entry), cost_range),
        }
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def save_results(res: dict, path: str | Path) -> Path:
    """Strict JSON (NaN -> null, e.g. a gap target a router never reaches)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(res), indent=1, allow_nan=False))
    return path


REQUIRED = ("format", "preferences", "default_preference", "routers", "summary", "cost_range", "data")


def load_results(path: str | Path) -> dict:
    """Read a results.json back; null figures come back as NaN."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: results file not found")
    try:
        res = json.loads(path.read_text())
    except ValueError as e:
        raise ResultsError(f"{path}: not valid JSON: {e}") from None
    missing = [k for k in REQUIRED if k not in res] if isinstance(res, dict) else list(REQUIRED)
    if missing:
        raise ResultsError(f"{path}: not a barp-ray results file (missing {missing})")
    from barp_ray.evaluation.experiment import RESULTS_FORMAT

    if res["format"] != RESULTS_FORMAT:
        raise ResultsError(f"{path}: results format {res['format']}, this version reads {RESULTS_FORMAT}")
    return _nan_for_null(res)


def _nan_for_null(x):
    if isinstance(x, dict):
        return {k: _nan_for_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [float("nan") if v is None else _nan_for_null(v) for v in x]
    return x
