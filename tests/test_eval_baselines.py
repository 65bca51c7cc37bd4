"""Baselines: bandit learners see only the env's draw/step; every learner actually learns a toy routing problem."""
import numpy as np
import pytest

from barp_ray.evaluation.baselines import (
    BestLabelRouter,
    EpsilonGreedy,
    KNNRouter,
    LinearThompson,
    LinUCB,
    MLPSettings,
    Oracle,
    ScoreMLPRouter,
    TrainView,
    UniformRandom,
    train_bandit,
)
from barp_ray.evaluation.baselines.full_info import best_label_targets
from barp_ray.evaluation.metrics import operating_point
from envs.preference import PreferenceSampler
from envs.reward import reward
from envs.routing_env import BanditData, BanditRounds

TAU = 1.0
PREFS = [(1.0, 0.0), (0.8, 0.2), (0.2, 0.8)]


def toy(n=600, seed=0):
    """Two prompt clusters, three models; the best model depends on the cluster *and* on w.

    m0: free, 0.5 everywhere. m1: cost 1.0 (= tau), 1.0 on cluster A, 0.2 on B. m2: cost 0.5, 0.2 on A, 0.9 on B.
    """
    rng = np.random.default_rng(seed)
    cluster = rng.integers(2, size=n)
    emb = rng.normal(scale=0.15, size=(n, 16))
    emb[:, 0] += np.where(cluster == 0, 1.0, -1.0)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = np.stack([np.full(n, 0.5), np.where(cluster == 0, 1.0, 0.2), np.where(cluster == 0, 0.2, 0.9)], axis=1)
    costs = np.tile([0.0, 1.0, 0.5], (n, 1))
    return emb.astype(np.float32), scores.astype(np.float32), costs


def make_env(data, seed=0):
    return BanditRounds(data, TAU, PreferenceSampler(), seed=seed)


LEARNERS = {
    "eps": lambda: EpsilonGreedy(3, epsilon=0.1, dims=4, seed=1),
    "ucb": lambda: LinUCB(3, alpha=0.5, dims=4, seed=1),
    "ts": lambda: LinearThompson(3, scale=0.3, dims=4, seed=1),
}


class OnlyDrawStep:
    """Exposes the env's draw and step and nothing else; records what the learner asked for."""

    __slots__ = ("_env", "calls", "queried")

    def __init__(self, env):
        self._env = env
        self.calls = []
        self.queried = []

    def draw(self, n):
        rows, obs = self._env.draw(n)
        self.calls.append("draw")
        return rows, obs

    def step(self, rows, preference, actions):
        self.calls.append("step")
        self.queried.append((np.array(rows), np.array(actions)))
        return self._env.step(rows, preference, actions)


class PeekingEpsilonGreedy(EpsilonGreedy):
    """A cheat: picks the arm with the best *hidden* score. The tests below must catch it."""

    def explore(self, phi):
        hidden = self._env.data.scores[self._rows]
        return hidden.argmax(axis=1)


def cheating_train(learner, env, rounds, batch):
    done = 0
    while done < rounds:
        rows, obs = env.draw(batch)
        if learner.arms is None:
            learner.start(obs["embedding"])
        learner._env, learner._rows = env, rows
        phi = learner.features(obs["embedding"], obs["preference"])
        a = learner.explore(phi)
        learner.observe(phi, a, env.step(rows, obs["preference"], a))
        done += batch


@pytest.mark.parametrize("kind", sorted(LEARNERS))
def test_bandit_training_calls_only_draw_and_step(kind):
    emb, scores, costs = toy()
    proxy = OnlyDrawStep(make_env(BanditData(emb, scores, costs, ("m0", "m1", "m2"))))
    learner = train_bandit(LEARNERS[kind](), proxy, rounds=5000, batch=1000)
    assert proxy.calls == ["draw", "step"] * 5
    assert learner.rounds_seen == 5000


def test_the_proxy_catches_a_learner_that_reaches_for_hidden_outcomes():
    emb, scores, costs = toy()
    proxy = OnlyDrawStep(make_env(BanditData(emb, scores, costs, ("m0", "m1", "m2"))))
    with pytest.raises(AttributeError):
        cheating_train(PeekingEpsilonGreedy(3, dims=4), proxy, 2000, 1000)


def _counterfactual_pair(train_fn, make_learner):
    """Train on the real table, then on a copy whose never-queried (prompt, model) entries are garbage."""
    emb, scores, costs = toy()
    data = BanditData(emb, scores, costs, ("m0", "m1", "m2"))
    recorder = OnlyDrawStep(make_env(data, seed=3))
    a = make_learner()
    train_fn(a, recorder, 4000, 500)
    queried = np.zeros(scores.shape, dtype=bool)
    for rows, actions in recorder.queried:
        queried[rows, actions] = True
    rng = np.random.default_rng(9)
    scores2 = np.where(queried, scores, rng.random(scores.shape)).astype(np.float32)
    costs2 = np.where(queried, costs, rng.random(costs.shape) * 3)
    b = make_learner()
    train_fn(b, make_env(BanditData(emb, scores2, costs2, data.models), seed=3), 4000, 500)
    return a, b, queried


@pytest.mark.parametrize("kind", sorted(LEARNERS))
def test_bandit_learners_are_blind_to_outcomes_they_never_queried(kind):
    a, b, queried = _counterfactual_pair(lambda l, e, r, n: train_bandit(l, e, r, n), LEARNERS[kind])
    assert not queried.all(), "the test needs hidden entries to perturb"
    np.testing.assert_array_equal(a.arms.theta, b.arms.theta)


def test_counterfactual_check_catches_a_peeking_learner():
    """Same check on the cheat: perturbing entries it never 'queried' through step changes what it learns."""
    emb, scores, costs = toy()
    data = BanditData(emb, scores, costs, ("m0", "m1", "m2"))
    env = make_env(data, seed=3)
    a = PeekingEpsilonGreedy(3, dims=4, seed=1)
    queried = np.zeros(scores.shape, dtype=bool)
    original_step = env.step

    def recording_step(rows, preference, actions):
        queried[rows, actions] = True
        return original_step(rows, preference, actions)

    env.step = recording_step
    cheating_train(a, env, 4000, 500)
    rng = np.random.default_rng(9)
    scores2 = np.where(queried, scores, rng.random(scores.shape)).astype(np.float32)
    b = PeekingEpsilonGreedy(3, dims=4, seed=1)
    cheating_train(b, make_env(BanditData(emb, scores2, costs, data.models), seed=3), 4000, 500)
    assert not np.array_equal(a.arms.theta, b.arms.theta)


def _greedy_reward(router, emb, scores, costs, w):
    return operating_point(scores, costs, router.choose(emb, w), w, TAU).reward


def _oracle_reward(emb, scores, costs, w):
    return _greedy_reward(Oracle(scores, costs, TAU), emb, scores, costs, w)


@pytest.mark.parametrize("kind", sorted(LEARNERS))
def test_bandit_learners_learn_preference_dependent_routing(kind):
    emb, scores, costs = toy()
    test_emb, test_scores, test_costs = toy(300, seed=1)
    learner = train_bandit(LEARNERS[kind](), make_env(BanditData(emb, scores, costs, ("m0", "m1", "m2"))), 30000, 1000)
    for w in PREFS:
        got = _greedy_reward(learner, test_emb, test_scores, test_costs, w)
        best = _oracle_reward(test_emb, test_scores, test_costs, w)
        rand = _greedy_reward(UniformRandom(3), test_emb, test_scores, test_costs, w)
        assert got > best - 0.03, (w, got, best)
        assert best - rand > 0.1  # the problem is not trivial at this w


def test_train_view_partition_is_disjoint_and_complete():
    emb, scores, costs = toy(100)
    v = TrainView.build(emb, scores, costs, TAU, 0.2, seed=4)
    assert len(v.val_index) == 20 and len(v.fit_index) == 80
    assert sorted(np.concatenate([v.fit_index, v.val_index]).tolist()) == list(range(100))
    with pytest.raises(ValueError, match="validation_fraction"):
        TrainView.build(emb[:1], scores[:1], costs[:1], TAU, 0.5, seed=0)


def test_best_label_targets_split_ties_evenly():
    r = np.array([[0.2, 0.5, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(best_label_targets(r), [[0, 0.5, 0.5], [1, 0, 0]])


@pytest.mark.parametrize("make", [lambda: KNNRouter((1, 5, 25)), lambda: ScoreMLPRouter(MLPSettings(hidden=32, max_epochs=60)),
                                  lambda: BestLabelRouter(MLPSettings(hidden=32, max_epochs=60))])
def test_full_information_routers_solve_the_toy(make):
    emb, scores, costs = toy()
    test_emb, test_scores, test_costs = toy(300, seed=1)
    view = TrainView.build(emb, scores, costs, TAU, 0.2, seed=0)
    router = make()
    router = router.fit(view, PREFS) if isinstance(router, KNNRouter) else router.fit(view, PREFS, seed=0)
    for w in PREFS:
        got = _greedy_reward(router, test_emb, test_scores, test_costs, w)
        assert got > _oracle_reward(test_emb, test_scores, test_costs, w) - 0.03, (router.name, w, got)
    if isinstance(router, KNNRouter):
        assert router.k in (1, 5, 25) and set(router.validation) == {1, 5, 25}


def test_knn_finds_neighbours_by_the_embedding_alone_when_text_statistics_follow_it():
    """Cosine neighbours need unit-norm rows; statistics of a few units appended would outweigh h(x)."""
    emb, scores, costs = toy()
    test_emb = toy(300, seed=1)[0]
    rng = np.random.default_rng(0)
    stats, test_stats = 3 * rng.standard_normal((len(emb), 6)), 3 * rng.standard_normal((len(test_emb), 6))
    plain = KNNRouter((5, 25)).fit(TrainView.build(emb, scores, costs, TAU, 0.2, seed=0), PREFS)
    wide = KNNRouter((5, 25), dims=emb.shape[1]).fit(
        TrainView.build(np.hstack([emb, stats]), scores, costs, TAU, 0.2, seed=0), PREFS)
    np.testing.assert_array_equal(wide.predict_scores(np.hstack([test_emb, test_stats])), plain.predict_scores(test_emb))
    assert wide.k == plain.k


def test_best_label_router_refuses_an_untrained_preference():
    emb, scores, costs = toy(200)
    router = BestLabelRouter(MLPSettings(hidden=8, max_epochs=2)).fit(TrainView.build(emb, scores, costs, TAU, 0.2, 0), [(1.0, 0.0)])
    with pytest.raises(ValueError, match="no classifier"):
        router.choose(emb, (0.5, 0.5))


def test_oracle_is_the_per_prompt_best_reward():
    emb, scores, costs = toy(50)
    w = (0.8, 0.2)
    got = _oracle_reward(emb, scores, costs, w)
    assert got == pytest.approx(reward(scores, costs, 0.8, 0.2, TAU).max(axis=1).mean())
