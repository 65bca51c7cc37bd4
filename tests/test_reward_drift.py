"""The replay's change detector: it must find a real fall in served reward and stay quiet otherwise."""
from __future__ import annotations

import numpy as np
import pytest

from serve.reward_drift import drop_cut

SHIPPED = {"z": 5.0, "min_drop": 0.1}  # configs/serve.yaml's trainer.drift_*


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_a_world_that_does_not_change_is_never_forgotten(p):
    rng = np.random.default_rng(int(p * 10))
    # every update scans the window again: 400 windows of a stationary Bernoulli world
    alarms = [drop_cut(rng.random(1024) < p, **SHIPPED) for _ in range(400)]
    assert all(a is None for a in alarms), sum(a is not None for a in alarms)


def test_a_policy_that_is_learning_is_not_a_change():
    rng = np.random.default_rng(1)
    rising = rng.random(1024) < np.linspace(0.2, 0.9, 1024)
    assert drop_cut(rising, **SHIPPED) is None


@pytest.mark.parametrize("after", [40, 100])
def test_a_fall_in_reward_is_found_where_it_happened(after):
    rng = np.random.default_rng(after)
    rewards = np.concatenate([rng.random(1000) < 0.8, rng.random(after) < 0.2])
    cut = drop_cut(rewards, **SHIPPED)
    assert cut is not None and abs(cut - 1000) <= 12, cut


def test_an_older_fall_is_cut_where_it_happened_and_a_small_one_is_ignored():
    rng = np.random.default_rng(0)
    old = np.concatenate([rng.random(500) < 0.8, rng.random(524) < 0.2])
    assert abs(drop_cut(old, **SHIPPED) - 500) <= 12  # all 524 records of the new world are kept
    assert drop_cut(old, z=0, min_drop=0.1) is None  # z = 0 turns it off
    small = np.concatenate([rng.normal(0.55, 0.01, 1000), rng.normal(0.5, 0.01, 100)])
    assert drop_cut(small, **SHIPPED) is None  # certain, but below 0.1 reward
