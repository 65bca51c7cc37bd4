"""Every evaluation metric on hand-made tables whose answers were worked out on paper."""
import math

import numpy as np
import pytest

from barp_ray.evaluation.metrics import (
    aiq,
    call_performance,
    cost_to_reach,
    gap_targets,
    hull_dominance,
    one_hot,
    operating_point,
    pareto_hull,
    per_task,
    relative_difference,
)
from barp_ray.evaluation.results import derive, mean_std

# 4 prompts x 2 models; tau = 1 so normalised cost = min(c, 1).
SCORES = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 1.0], [1.0, 1.0]])
COSTS = np.array([[0.2, 0.4], [0.2, 0.4], [0.2, 2.0], [0.2, 0.4]])
TASKS = np.array(["a", "a", "b", "b"])


def test_operating_point_deterministic_choice():
    p = operating_point(SCORES, COSTS, one_hot([0, 1, 1, 0], 2), (0.8, 0.2), tau=1.0)
    # q = (1 + 1 + 1 + 1)/4 = 1; c = (0.2+0.4+2.0+0.2)/4 = 0.7; normalised c = (0.2+0.4+1+0.2)/4 = 0.45
    assert p.quality == pytest.approx(1.0)
    assert p.cost == pytest.approx(0.7)
    assert p.reward == pytest.approx(0.8 * 1.0 - 0.2 * 0.45)


def test_operating_point_in_expectation_for_random_routing():
    p = operating_point(SCORES, COSTS, np.full((4, 2), 0.5), (1.0, 0.0), tau=1.0)
    assert p.quality == pytest.approx(SCORES.mean())
    assert p.cost == pytest.approx(COSTS.mean())
    assert p.reward == pytest.approx(SCORES.mean())


def test_operating_point_rejects_bad_choice_matrix():
    with pytest.raises(ValueError, match="probability"):
        operating_point(SCORES, COSTS, np.full((4, 2), 0.7), (0.5, 0.5), 1.0)
    with pytest.raises(ValueError, match="shape"):
        operating_point(SCORES, COSTS, np.full((3, 2), 0.5), (0.5, 0.5), 1.0)


def test_per_task_breakdown():
    out = per_task(SCORES, COSTS, TASKS, one_hot([0, 0, 0, 0], 2), (0.5, 0.5), 1.0)
    assert list(out) == ["a", "b"]
    assert out["a"] == pytest.approx({"reward": 0.5 * 0.5 - 0.5 * 0.2, "quality": 0.5, "cost": 0.2, "n": 2})
    assert out["b"] == pytest.approx({"reward": 0.5 * 0.75 - 0.5 * 0.2, "quality": 0.75, "cost": 0.2, "n": 2})


def test_hull_drops_dominated_and_under_hull_points():
    costs = [0.2, 0.4, 0.6, 0.8, 0.6, 0.1]
    quality = [0.5, 0.6, 0.9, 0.7, 0.85, 0.35]
    # (0.8, 0.7): costs more than (0.6, 0.9) for less -> dropped; (0.6, 0.85): same cost, worse -> dropped;
    # (0.4, 0.6): under the segment (0.2, 0.5)-(0.6, 0.9) (0.7 there) -> dropped.
    np.testing.assert_allclose(pareto_hull(costs, quality), [[0.1, 0.35], [0.2, 0.5], [0.6, 0.9]])


@pytest.mark.parametrize(
    "costs, quality, expected",
    [
        ([0.2, 0.6], [0.5, 0.9], 0.4 * 0.7 + 0.4 * 0.9),  # 0 below 0.2, linear to 0.6, flat at 0.9 after
        ([0.2, 0.6, 0.4], [0.5, 0.9, 0.6], 0.64),  # a point under the hull changes nothing
        ([0.2, 0.6, 0.4], [0.5, 0.9, 0.8], 0.2 * 0.65 + 0.2 * 0.85 + 0.4 * 0.9),  # a point above it lifts the hull
        ([0.2, 0.6, 0.8], [0.5, 0.9, 0.7], 0.64),  # a dominated point changes nothing
        ([0.5], [0.8], 0.5 * 0.8),  # a single model: its quality over the part of the range it can afford
        ([0.0, 1.0], [0.0, 1.0], 0.5),
    ],
)
def test_aiq_known_answers(costs, quality, expected):
    assert aiq(costs, quality, (0.0, 1.0)) == pytest.approx(expected)


def test_aiq_uses_the_shared_cost_range():
    # range [0.2, 1.0]: hull 0.5->0.9 over [0.2, 0.6], flat 0.9 over [0.6, 1.0]; area 0.28 + 0.36 over width 0.8
    assert aiq([0.2, 0.6], [0.5, 0.9], (0.2, 1.0)) == pytest.approx(0.64 / 0.8)
    assert aiq([1.5], [0.9], (0.0, 1.0)) == 0.0  # cannot operate anywhere in the range
    assert aiq([0.0], [0.3], (0.5, 1.0)) == pytest.approx(0.3)  # cheaper than the range: flat across it
    with pytest.raises(ValueError, match="hi > lo"):
        aiq([0.1], [0.1], (1.0, 1.0))


def test_cost_to_reach_interpolates_along_the_hull():
    costs, quality = [0.2, 0.6, 0.4], [0.5, 0.9, 0.6]
    assert cost_to_reach(costs, quality, 0.7) == pytest.approx(0.4)  # halfway up the 0.2->0.6 segment
    assert cost_to_reach(costs, quality, 0.3) == pytest.approx(0.2)  # below the cheapest point: its cost
    assert math.isnan(cost_to_reach(costs, quality, 0.95))  # never reached


def test_call_performance_gap_targets():
    singles_cost = [0.1, 0.1, 0.5, 1.0]
    singles_q = [0.2, 0.4, 0.6, 0.8]  # cheapest tier's best = 0.4, best overall = 0.8
    targets = gap_targets(singles_cost, singles_q)
    assert targets == pytest.approx({0.5: 0.6, 0.8: 0.72})
    reach = call_performance([0.1, 0.3], [0.4, 0.8], targets)
    assert reach[0.5] == pytest.approx(0.2)
    assert reach[0.8] == pytest.approx(0.1 + 0.32 / 0.4 * 0.2)


def test_relative_difference_and_dominance():
    assert relative_difference(0.44, 0.40) == pytest.approx(0.1)
    assert relative_difference(-0.1, -0.2) == pytest.approx(0.5)  # less negative is better
    assert math.isnan(relative_difference(1.0, 0.0))
    ours, worse = ([0.0, 1.0], [0.5, 1.0]), ([0.0, 1.0], [0.4, 0.9])
    assert hull_dominance(ours, worse, (0.0, 1.0)) == 1.0
    assert hull_dominance(worse, ours, (0.0, 1.0)) == 0.0
    crossing = ([0.0, 1.0], [0.7, 0.8])  # above `ours` until c = 0.5, below after
    assert hull_dominance(ours, crossing, (0.0, 1.0), grid=1001) == pytest.approx(0.5, abs=0.002)


def test_mean_std_ignores_unreached_targets():
    assert mean_std([1.0, 3.0]) == pytest.approx([2.0, math.sqrt(2.0)])
    assert mean_std([2.0, float("nan")]) == [2.0, 0.0]
    assert all(math.isnan(v) for v in mean_std([float("nan")]))


def _run(seed, rewards, qualities, costs):
    pts = [{"preference": [w, 1 - w], "reward": r, "quality": q, "cost": c} for w, r, q, c in zip((0.0, 0.8, 1.0), rewards, qualities, costs)]
    return {"seed": seed, "points": pts, "per_task": {"t": {"reward": rewards[1], "quality": qualities[1], "cost": costs[1], "n": 1}}}


def test_derive_summary_on_hand_made_results():
    fixed = lambda q, c: [_run(s, [-c, 0.8 * q - 0.2 * c, q], [q] * 3, [c] * 3) for s in (0, 1)]  # noqa: E731
    raw = {
        "preferences": [[0.0, 1.0], [0.8, 0.2], [1.0, 0.0]],
        "default_preference": [0.8, 0.2],
        "data": {"largest_model": "big"},
        "routers": {
            "BaRP": {"family": "bandit feedback (REINFORCE)", "tracks_preference": True,
                     "runs": [_run(0, [0.0, 0.55, 0.9], [0.3, 0.7, 0.9], [0.1, 0.4, 0.9]),
                              _run(1, [0.0, 0.45, 0.9], [0.3, 0.6, 0.9], [0.1, 0.4, 0.9])]},
            "kNN": {"family": "full information", "tracks_preference": True,
                    "runs": [_run(0, [0.0, 0.5, 0.8], [0.3, 0.7, 0.8], [0.1, 0.5, 0.8]),
                             _run(1, [0.0, 0.5, 0.8], [0.3, 0.7, 0.8], [0.1, 0.5, 0.8])]},
            "small": {"family": "single model", "tracks_preference": False, "runs": fixed(0.3, 0.1)},
            "big": {"family": "single model", "tracks_preference": False, "runs": fixed(0.9, 1.0)},
        },
    }
    res = derive(raw)
    assert res["cost_range"] == pytest.approx([0.1, 1.0])
    assert res["gap_targets"] == pytest.approx({"0.5": 0.6, "0.8": 0.78})
    s = res["summary"]
    assert s["best_full_information_router"]["router_per_seed"] == ["kNN", "kNN"]
    rel = s["best_full_information_router"]["reward"]["relative_per_seed"]
    assert rel == pytest.approx([0.1, -0.1])  # 0.55 vs 0.5, 0.45 vs 0.5
    assert s["best_full_information_router"]["reward"]["relative"] == pytest.approx([0.0, math.sqrt(0.02)])
    big = 0.8 * 0.9 - 0.2 * 1.0
    assert s["largest_model"]["reward"]["relative_per_seed"] == pytest.approx([(0.55 - big) / big, (0.45 - big) / big])
    assert s["largest_model"]["quality"]["relative_per_seed"] == pytest.approx([0.7 / 0.9 - 1, 0.6 / 0.9 - 1])
    # BaRP's AIQ, seed 0: hull (0.1,.3)->(0.4,.7)->(0.9,.9), flat to 1.0, over [0.1, 1.0]
    area = 0.3 * 0.5 + 0.5 * 0.8 + 0.1 * 0.9
    assert res["routers"]["BaRP"]["stats"]["aiq_per_seed"][0] == pytest.approx(area / 0.9)
    dom = res["dominance"]["kNN"]
    assert dom["reward_wins"] == 3 and dom["loses_at_wq"] == []


def test_paired_bootstrap_tells_a_real_difference_from_noise():
    from barp_ray.evaluation.significance import best_single_per_preference, paired_bootstrap

    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.3, size=(2, 500))
    out = paired_bootstrap(np.stack([noise[0], noise[1] + 0.1]))  # no difference; a real +0.1
    assert out["low"][0] < 0 < out["high"][0]
    assert 0 < out["low"][1] < 0.1 < out["high"][1]
    assert out["mean"] == pytest.approx(np.stack([noise[0], noise[1] + 0.1]).mean(axis=1).tolist())
    # the best single model is chosen per preference, on its mean there
    a = np.array([[[1.0, 1.0], [0.0, 0.0]]])  # [seed, preference, prompt]
    b = np.array([[[0.0, 0.5], [1.0, 0.0]]])
    assert best_single_per_preference({"a": a, "b": b}, ["a", "b"]).tolist() == [[[1.0, 1.0], [1.0, 0.0]]]
