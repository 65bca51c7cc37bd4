import numpy as np
import pytest

from envs.reward import normalized_cost, reward


def test_reward_formula_matches_paper():
    # r = w_q * q - w_c * min(c / tau, 1)
    assert reward(0.9, 0.002, 0.7, 0.3, tau=0.01) == pytest.approx(0.7 * 0.9 - 0.3 * 0.2)


def test_cost_cap_clips_at_one():
    assert normalized_cost(0.05, tau=0.01) == pytest.approx(1.0)
    assert reward(1.0, 123.0, 0.5, 0.5, tau=0.01) == pytest.approx(0.0)
    # below the cap the cost is linear
    assert normalized_cost(0.004, tau=0.01) == pytest.approx(0.4)


def test_reward_broadcasts_over_batches():
    q = np.array([[1.0, 0.0], [0.5, 0.5]])
    c = np.array([[0.0, 0.02], [0.01, 0.005]])
    r = reward(q, c, np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]]), tau=0.01)
    np.testing.assert_allclose(r, [[1.0, 0.0], [-1.0, -0.5]])


def test_tau_must_be_positive():
    with pytest.raises(ValueError, match="tau"):
        normalized_cost(1.0, tau=0.0)
