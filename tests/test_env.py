import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import BanditData, PreferenceSampler, RoutingBanditEnv
from envs.reward import reward

K = 4


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(64, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return BanditData(emb, rng.random((64, K)).astype(np.float32), rng.random((64, K)) * 0.02, ("a", "b", "c", "d"))


def test_env_checker_passes(data):
    check_env(RoutingBanditEnv({"data": data, "tau": 0.01, "seed": 0}), skip_render_check=True)


def test_registered_gymnasium_id(data):
    env = gym.make(envs.ENV_ID, config={"data": data, "tau": 0.01})
    obs, _ = env.reset(seed=3)
    assert set(obs) == {"embedding", "preference"}
    assert env.action_space.n == K


def test_one_step_reward_is_chosen_model_only_and_info_is_empty(data):
    env = RoutingBanditEnv({"data": data, "tau": 0.01, "seed": 1})
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        assert info == {}
        row = int(np.flatnonzero((data.embeddings == obs["embedding"]).all(axis=1))[0])
        a = seed % K
        _, r, terminated, truncated, info = env.step(a)
        assert terminated and not truncated
        assert info == {}, "info must not reveal any outcome"
        w = obs["preference"]
        expected = reward(data.scores[row, a], data.costs[row, a], w[0], w[1], 0.01)
        assert r == pytest.approx(float(expected), rel=1e-5)


def test_observation_carries_no_hidden_outcomes(data):
    env = RoutingBanditEnv({"data": data, "tau": 0.01})
    obs, _ = env.reset(seed=0)
    flat = np.concatenate([obs["embedding"], obs["preference"]])
    assert flat.shape == (386,)
    for row in data.scores:
        assert not np.isin(row, flat).any()


def test_step_before_reset_and_bad_action(data):
    env = RoutingBanditEnv({"data": data, "tau": 0.01})
    with pytest.raises(RuntimeError):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(K)


@pytest.mark.parametrize(
    "spec",
    [{"kind": "uniform"}, {"kind": "dirichlet", "alpha": [2.0, 5.0]}, {"kind": "fixed", "values": [[0.8, 0.2], [0.3, 0.7]]}],
)
def test_preference_samplers_stay_on_simplex(spec):
    w = PreferenceSampler.from_dict(spec).sample(np.random.default_rng(0), 1000)
    assert w.shape == (1000, 2)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    if spec["kind"] == "fixed":
        assert sorted(np.unique(np.round(w[:, 0].astype(float), 4)).tolist()) == [0.3, 0.8]
    if spec["kind"] == "dirichlet":
        assert abs(w[:, 0].mean() - 2 / 7) < 0.03


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"kind": "gauss"}, "kind"),
        ({"kind": "fixed"}, "values"),
        ({"kind": "fixed", "values": [[0.5, 0.6]]}, "sum to 1"),
        ({"kind": "dirichlet", "alpha": [0, 1]}, "alpha"),
        ({"kind": "uniform", "sigma": 1}, "unknown"),
    ],
)
def test_bad_preference_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        PreferenceSampler.from_dict(spec)


def test_gymnasium_make_with_no_arguments_is_the_embedded_world():
    """What a Gymnasium user types first: the synthetic world, prompts encoded by the packaged MiniLM."""
    env = gym.make(envs.ENV_ID)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs["embedding"].shape == (384,) and abs(float(np.linalg.norm(obs["embedding"])) - 1) < 1e-3
    _, r, terminated, _, info = env.step(env.action_space.sample())
    assert terminated and info == {} and -1.0 <= r <= 1.0


def test_gymnasium_make_from_a_barp_config_file(tmp_path):
    (tmp_path / "world.yaml").write_text(
        "data: {source: synthetic, synthetic_prompts: 1200}\n"  # the world tests/test_training.py caches
        "env: {tau: 0.002, preference: {kind: fixed, values: [[1.0, 0.0]]}, prompt_sampling: per_task}\n")
    env = gym.make(envs.ENV_ID, config=str(tmp_path / "world.yaml"), split="test")
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert obs["preference"].tolist() == [1.0, 0.0]  # the YAML's preference sampler
    assert env.unwrapped._rounds.tau == 0.002 and env.unwrapped._rounds.data.embeddings.shape[0] == 240  # its test split
    assert env.unwrapped._rounds.data.weights is not None  # and its prompt sampling
    with pytest.raises(ValueError, match="split"):
        gym.make(envs.ENV_ID, config=str(tmp_path / "world.yaml"), split="validation")


def test_task_balanced_sampling_gives_every_task_the_same_share_of_rounds():
    from envs.preference import PreferenceSampler
    from envs.routing_env import BanditData, BanditRounds, task_balanced

    tasks = np.array(["big"] * 900 + ["small"] * 100)
    rng = np.random.default_rng(0)
    data = BanditData(rng.standard_normal((1000, 4)).astype(np.float32), rng.random((1000, 3)).astype(np.float32),
                      rng.random((1000, 3)), ("a", "b", "c"))
    uniform = BanditRounds(data, 1.0, PreferenceSampler.from_dict({"kind": "uniform"}), seed=1)
    balanced = BanditRounds(BanditData(data.embeddings, data.scores, data.costs, data.models, task_balanced(tasks)),
                            1.0, PreferenceSampler.from_dict({"kind": "uniform"}), seed=1)
    share = lambda rounds: np.mean(tasks[rounds.draw(20_000)[0]] == "small")
    assert abs(share(uniform) - 0.1) < 0.01 and abs(share(balanced) - 0.5) < 0.02
    rows = balanced.draw(20_000)[0]
    assert len(np.unique(rows[tasks[rows] == "small"])) == 100  # uniform within a task: every prompt drawn
    with pytest.raises(ValueError, match="weights"):
        BanditData(data.embeddings, data.scores, data.costs, data.models, np.full(1000, 0.5))
