"""The numbers a router is judged by: mean reward/score/cost, per-task breakdown, AIQ and call-performance.

Every function works on plain arrays so the same definitions score BaRP, the baselines and a
hand-made table in a test. A router's decisions on N prompts are a *choice matrix* [N, K]: row i
is the probability of sending prompt i to each of the K models (one-hot for a deterministic
router, uniform for random routing), so expectations are exact rather than sampled.

Cost–quality curve definitions (RouterBench's AIQ, written out so the figures can be checked):

* **Hull.** A router that has several operating points (one per knob value, e.g. per preference
  w) can reach any mixture of two of them by flipping a biased coin per request, and it can always
  spend less than it is allowed. So the quality it can deliver at budget c is the *non-decreasing
  upper concave hull* of its (cost, quality) points: drop points that a cheaper point matches or
  beats, then take the upper concave envelope of the rest. Below its cheapest point the router
  cannot operate (quality 0 there); above its costliest hull point it stays flat at that quality.
* **AIQ.** The mean of that hull over a cost range [c_lo, c_hi] shared by every router in a
  comparison: (1 / (c_hi - c_lo)) * integral of hull(c) dc. We use c_lo / c_hi = the cheapest and
  the priciest single model's mean cost on the test prompts, so the range is a property of the data,
  not of the routers being compared. (RouterBench's own code integrates from $0; shifting the
  origin to the cheapest model only removes a band in which no router can operate.)
* **Call-performance.** With q_cheap the score of the cheapest single model and q_best the score of
  the best-scoring single model, the cost needed to reach q_cheap + f * (q_best - q_cheap) for
  f = 50 % and 80 %, read off the hull by linear interpolation (NaN when the hull never gets there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from envs.reward import reward

GAP_FRACTIONS = (0.5, 0.8)


@dataclass(frozen=True)
class OperatingPoint:
    """One router at one preference: what it earned, how good its answers were, what it paid per query."""

    preference: tuple[float, float]
    reward: float
    quality: float
    cost: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["preference"] = list(self.preference)
        return d


def one_hot(actions: np.ndarray, k: int) -> np.ndarray:
    """Deterministic choices as a choice matrix."""
    actions = np.asarray(actions, dtype=np.int64)
    out = np.zeros((len(actions), k), dtype=np.float64)
    out[np.arange(len(actions)), actions] = 1.0
    return out


def _check_choice(choice: np.ndarray, scores: np.ndarray) -> np.ndarray:
    choice = np.asarray(choice, dtype=np.float64)
    if choice.shape != scores.shape:
        raise ValueError(f"choice matrix has shape {choice.shape}, table has {scores.shape}")
    if not np.allclose(choice.sum(axis=1), 1.0, atol=1e-6) or choice.min() < -1e-12:
        raise ValueError("choice matrix rows must be probability distributions")
    return choice


def _expected_rewards(scores: np.ndarray, costs: np.ndarray, choice: np.ndarray, wq: float, wc: float, tau: float) -> np.ndarray:
    """[N]: each prompt's reward (`envs.reward`, per model) in expectation over a checked choice matrix."""
    return (choice * reward(scores, costs, wq, wc, tau)).sum(axis=1)


def prompt_rewards(scores, costs, choice, preference, tau: float) -> np.ndarray:
    """[N]: each prompt's reward, in expectation over `choice` (what a paired comparison resamples)."""
    scores = np.asarray(scores, dtype=np.float64)
    choice = _check_choice(choice, scores)
    return _expected_rewards(scores, np.asarray(costs, dtype=np.float64), choice, float(preference[0]), float(preference[1]), tau)


def operating_point(scores, costs, choice, preference, tau: float) -> OperatingPoint:
    """Mean reward r = w_q*q - w_c*min(c/tau, 1), mean score q and mean dollar cost c, in expectation over `choice`."""
    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    choice = _check_choice(choice, scores)
    wq, wc = float(preference[0]), float(preference[1])
    q = (choice * scores).sum(axis=1)
    c = (choice * costs).sum(axis=1)
    return OperatingPoint(
        preference=(wq, wc), reward=float(_expected_rewards(scores, costs, choice, wq, wc, tau).mean()),
        quality=float(q.mean()), cost=float(c.mean())
    )


def per_task(scores, costs, tasks, choice, preference, tau: float) -> dict[str, dict]:
    """The same three means within each task (plus the prompt count), sorted by task name."""
    tasks = np.asarray(tasks).astype(str)
    out = {}
    for t in sorted(set(tasks.tolist())):
        m = tasks == t
        p = operating_point(np.asarray(scores)[m], np.asarray(costs)[m], np.asarray(choice)[m], preference, tau)
        out[t] = {"reward": p.reward, "quality": p.quality, "cost": p.cost, "n": int(m.sum())}
    return out


def pareto_hull(costs, qualities) -> np.ndarray:
    """[M, 2] vertices (cost, quality) of the non-decreasing upper concave hull, sorted by cost."""
    pts = np.column_stack([np.asarray(costs, dtype=np.float64), np.asarray(qualities, dtype=np.float64)])
    if len(pts) == 0 or not np.all(np.isfinite(pts)):
        raise ValueError("hull needs at least one finite (cost, quality) point")
    pts = pts[np.lexsort((-pts[:, 1], pts[:, 0]))]  # by cost, best quality first among equal costs
    frontier = []
    best = -np.inf
    for c, q in pts:  # keep only points that beat everything cheaper
        if q > best:
            frontier.append((c, q))
            best = q
    hull: list[tuple[float, float]] = []
    for p in frontier:  # upper concave envelope (monotone chain)
        while len(hull) >= 2:
            (ax, ay), (bx, by) = hull[-2], hull[-1]
            if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) >= 0:  # b on or under segment a->p
                hull.pop()
            else:
                break
        hull.append(p)
    return np.asarray(hull)


def hull_quality(hull: np.ndarray, cost) -> np.ndarray:
    """Quality the hull delivers at each budget: 0 below its cheapest vertex, flat past its last."""
    cost = np.asarray(cost, dtype=np.float64)
    q = np.interp(cost, hull[:, 0], hull[:, 1])  # np.interp is flat beyond both ends
    return np.where(cost < hull[0, 0], 0.0, q)


def aiq(costs, qualities, cost_range: tuple[float, float]) -> float:
    """Mean hull quality over the shared cost range (see the module docstring)."""
    lo, hi = float(cost_range[0]), float(cost_range[1])
    if not hi > lo:
        raise ValueError(f"cost range must have hi > lo, got {cost_range}")
    hull = pareto_hull(costs, qualities)
    start = max(lo, hull[0, 0])
    if start >= hi:
        return 0.0
    xs = np.concatenate([[start], hull[(hull[:, 0] > start) & (hull[:, 0] < hi), 0], [hi]])
    ys = hull_quality(hull, xs)
    return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)) / (hi - lo))  # exact: the hull is linear between xs


def cost_to_reach(costs, qualities, target: float) -> float:
    """Cheapest budget at which the router's hull reaches `target` quality; NaN if it never does."""
    hull = pareto_hull(costs, qualities)
    if target <= hull[0, 1]:
        return float(hull[0, 0])
    if target > hull[-1, 1]:
        return float("nan")
    i = int(np.searchsorted(hull[:, 1], target))  # hull qualities increase strictly
    (c0, q0), (c1, q1) = hull[i - 1], hull[i]
    return float(c0 + (target - q0) * (c1 - c0) / (q1 - q0))


def gap_targets(single_costs, single_qualities, fractions=GAP_FRACTIONS) -> dict[float, float]:
    """Quality targets q_cheap + f*(q_best - q_cheap) from the single models' points."""
    c = np.asarray(single_costs, dtype=np.float64)
    q = np.asarray(single_qualities, dtype=np.float64)
    cheapest = np.flatnonzero(c == c.min())
    q_cheap = float(q[cheapest].max())
    q_best = float(q.max())
    return {float(f): q_cheap + float(f) * (q_best - q_cheap) for f in fractions}


def call_performance(costs, qualities, targets: dict[float, float]) -> dict[float, float]:
    """Cost to reach each gap target along the router's hull."""
    return {f: cost_to_reach(costs, qualities, t) for f, t in targets.items()}


def relative_difference(ours: float, reference: float) -> float:
    """(ours - reference) / |reference|: the paper-style 'x % better than' figure."""
    if reference == 0:
        return float("nan")
    return float((ours - reference) / abs(reference))


def hull_dominance(ours: tuple, other: tuple, cost_range: tuple[float, float], grid: int = 401, tol: float = 1e-9) -> float:
    """Fraction of the shared cost range over which our hull is at least as high as the other's.

    `ours` and `other` are (costs, qualities) pairs. 1.0 means our curve dominates everywhere.
    """
    xs = np.linspace(float(cost_range[0]), float(cost_range[1]), grid)
    a = hull_quality(pareto_hull(*ours), xs)
    b = hull_quality(pareto_hull(*other), xs)
    return float(np.mean(a >= b - tol))
