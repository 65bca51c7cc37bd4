"""`barp ope`: checkpoints judged on a feedback store's logged rounds, against the truth.

The store is filled as the service fills it (FeedbackStore decisions, then feedback) with rounds
logged by a uniformly exploring policy on the synthetic world, whose full-information table then
gives each checkpoint's true value on exactly those rounds: what the estimate must find.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from http_client import TOKEN

ROUNDS, GREEDY_ROUNDS = 1500, 40


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    from barp_ray.config import apply_overrides, load_config
    from barp_ray.data.prepare import split_tables
    from barp_ray.policy import RoutingPolicy
    from conftest import train_small
    from envs.reward import reward
    from serve.feedback_store import FeedbackStore, encode_vector, new_request_id

    root = tmp_path_factory.mktemp("ope")
    critic = ("training.baseline=critic", "training.critic_kl_coeff=1", "training.rounds_per_iteration=1024")
    strong = train_small(root / "strong", "training.iterations=40", *critic)
    weak = train_small(root / "weak", "training.iterations=1", *critic)
    policy = RoutingPolicy.load(strong)
    table, _ = split_tables(apply_overrides(load_config(None), ["data.synthetic_prompts=600"]).data)
    assert tuple(table.models) == policy.models
    h = policy.observe(list(table.prompts))
    rng = np.random.default_rng(7)
    k = len(table.models)
    prompts = rng.integers(0, len(table.prompts), ROUNDS + GREEDY_ROUNDS)
    w_q = rng.uniform(0, 1, ROUNDS + GREEDY_ROUNDS)
    actions = rng.integers(0, k, ROUNDS + GREEDY_ROUNDS)
    store = FeedbackStore(root / "log", tau=policy.tau)
    ids = []
    for n, (i, wq, a) in enumerate(zip(prompts, w_q, actions)):
        greedy = n >= ROUNDS  # logged with probability 1: they must be left out
        d = {"request_id": new_request_id(), "time": 0.0, "embedding": encode_vector(h[i]), "preference": [float(wq), 1 - float(wq)],
             "model": table.models[a], "behaviour_prob": 1.0 if greedy else 1.0 / k, "mode": "greedy" if greedy else "explore",
             "policy_version": 0, "models": list(table.models), "prices": None, "candidates": None}
        store.record_decision(d)
        ids.append(d["request_id"])
        store.record_feedback(d["request_id"], float(table.scores[i, a]), float(table.costs[i, a]))
    store.close()
    # every model's true reward on each exploring round, from the full-information table
    i, wq = prompts[:ROUNDS], w_q[:ROUNDS]
    truth = np.stack([reward(table.scores[i, a], table.costs[i, a], wq, 1 - wq, policy.tau) for a in range(k)], 1)
    (root / "token").write_text(TOKEN + "\n")
    config = root / "serve.yaml"
    config.write_text(yaml.safe_dump({"applications": [{"name": "barp", "import_path": "serve.app:app_builder", "args": {
        "checkpoint": strong, "log_dir": str(root / "log"), "auth": {"token_file": str(root / "token")}}}]}))
    return {"strong": strong, "weak": weak, "h": h[i], "wq": wq, "truth": truth, "config": str(config), "ids": ids[:ROUNDS]}


def _true_value(checkpoint, logged: dict, greedy: bool, epsilon: float = 0.1, rounds=slice(None)) -> float:
    """The checkpoint's (a path, or a loaded policy) exact expected reward on the logged rounds: its
    distribution times the table."""
    from barp_ray.policy import RoutingPolicy
    from serve.exploration import exploring_distribution

    policy = RoutingPolicy.load(checkpoint) if isinstance(checkpoint, str) else checkpoint
    h, wq = logged["h"][rounds], logged["wq"][rounds]
    p = policy.probabilities(h, np.stack([wq, 1 - wq], 1))
    dist = np.eye(p.shape[1])[p.argmax(1)] if greedy else exploring_distribution(p, epsilon)
    return float(np.mean((dist * logged["truth"][rounds]).sum(1)))


@pytest.mark.parametrize("as_", ["served", "greedy"])
def test_each_estimate_covers_the_true_value_and_ranks_the_checkpoints(logged, capsys, as_):
    from serve.offpolicy_eval import main

    # the checkpoints may sit on either side of the options
    assert main([logged["strong"], "--config", logged["config"], "--as", as_, "--json", logged["weak"]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rounds"] == ROUNDS and out["greedy_rounds_left_out"] == GREEDY_ROUNDS
    assert out["served_mean_reward"] == pytest.approx(float(np.mean(logged["truth"].mean(1))), abs=0.05)
    strong, weak = out["estimates"]
    truths = []
    for est, path in ((strong, logged["strong"]), (weak, logged["weak"])):
        truth = _true_value(path, logged, greedy=as_ == "greedy")
        truths.append(truth)
        assert est["estimator"] == "dr" and est["rounds"] == ROUNDS
        assert abs(est["value"] - truth) <= est["half_width"], (as_, path, est, truth)
        assert est["half_width"] < 0.05
        assert est["vs_served"] == pytest.approx(est["value"] - out["served_mean_reward"], abs=1e-9)
    assert truths[0] - truths[1] > 0.05  # the trained one is truly better here, and the estimates say so
    assert strong["value"] - weak["value"] > 0.05


def test_a_readable_table_and_one_line_errors(logged, capsys, tmp_path):
    from serve.offpolicy_eval import main

    assert main([logged["strong"], "--config", logged["config"], "--last", "300"]) == 0
    out = capsys.readouterr().out
    assert "260 exploring rounds judged (40 greedy left out)" in out and logged["strong"][-40:] in out
    assert main([str(tmp_path), "--config", logged["config"]]) == 2
    assert capsys.readouterr().err.startswith("barp ope: error: checkpoint: ")
    assert main([logged["strong"], "--config", logged["config"], "--last", "40"]) == 2  # only greedy rounds there
    assert "no rewarded exploring rounds among the newest 40" in capsys.readouterr().err
    assert main([logged["strong"], "--config", logged["config"], "--set", "feedback.database=oracle"]) == 2
    assert "feedback.database" in capsys.readouterr().err
    # a read-only tool: a store that is not there is an error, and none is made
    assert main([logged["strong"], "--config", logged["config"], "--set", f"log_dir={tmp_path / 'nowhere'}"]) == 2
    assert "log_dir: no feedback store at" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()


def test_replay_trains_a_checkpoint_on_the_log_and_ope_judges_it_on_rounds_it_never_saw(logged, capsys, tmp_path):
    """The workflow the README gives: `barp replay` a weak checkpoint over the logged rewards with a
    held-out share, `barp ope --holdout` the result against it on that share, the truth agreeing."""
    from serve.log_replay import main as replay
    from serve.logged_rounds import held_back
    from serve.offpolicy_eval import main as ope

    out = tmp_path / "replayed"
    assert replay([logged["weak"], "--out", str(out), "--config", logged["config"], "--holdout", "0.3", "--batch", "128"]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "--holdout 0.3" in said
    meta = json.loads((out / "barp_meta.json").read_text())
    assert meta["replayed"]["holdout"] == 0.3 and meta["replayed"]["through_id"] == ROUNDS + GREEDY_ROUNDS
    assert ope([str(out), logged["weak"], "--config", logged["config"], "--holdout", "0.3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    held = np.asarray([held_back(i, 0.3) for i in logged["ids"]])
    assert report["rounds"] == held.sum() and 300 < held.sum() < 600
    replayed, weak = report["estimates"]
    assert replayed["estimator"] == "dr"  # the replayed checkpoint carries the learner's critic
    truths = [_true_value(c, logged, greedy=False, rounds=held) for c in (str(out), logged["weak"])]
    assert truths[0] > truths[1] + 0.05, truths  # it learned from the log
    for est, truth in zip((replayed, weak), truths):
        assert abs(est["value"] - truth) <= est["half_width"], (est, truth)
    assert replayed["value"] > weak["value"] + 0.05
    # one-line refusals
    assert replay([logged["weak"], "--out", str(out), "--config", logged["config"]]) == 2
    assert "--out: " in capsys.readouterr().err
    assert replay([str(tmp_path / "none"), "--out", str(tmp_path / "x"), "--config", logged["config"]]) == 2
    assert capsys.readouterr().err.startswith("barp replay: error: checkpoint: ") and not (tmp_path / "x").exists()


def test_estimates_per_preference_band_cover_each_bands_truth(logged, capsys):
    from serve.offpolicy_eval import main

    assert main([logged["strong"], logged["weak"], "--config", logged["config"], "--by-preference", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for est, path in zip(out["estimates"], (logged["strong"], logged["weak"])):
        bands = est["bands"]
        assert [b["w_q"] for b in bands] == [[0.0, 0.2], [0.2, 0.4], [0.4, 0.6], [0.6, 0.8], [0.8, 1.0]]
        assert sum(b["rounds"] for b in bands) == ROUNDS
        covered = 0
        for b in bands:
            lo, hi = b["w_q"]
            keep = (logged["wq"] >= lo) & ((logged["wq"] < hi) if hi < 1 else (logged["wq"] <= hi))
            assert b["rounds"] == keep.sum()
            covered += abs(b["value"] - _true_value(path, logged, greedy=False, rounds=keep)) <= b["half_width"]
        assert covered >= 4, (path, bands)
    assert main([logged["strong"], "--config", logged["config"], "--by-preference"]) == 0
    assert "  w_q 0.8-1.0 (" in capsys.readouterr().out


def test_the_weights_served_now_are_judged_with_published(logged, capsys, tmp_path):
    """`--published`: the trainer's newest published version on the service's checkpoint, what the
    replicas serve now, judged beside the checkpoints named."""
    from barp_ray.policy import RoutingPolicy, load_policy_state
    from serve.offpolicy_eval import main
    from serve.settings import settings_from_config
    from serve.trainer import ContinuousTrainer, latest_published

    sets = ["--set", f"trainer.state_dir={tmp_path / 'trainer'}"]
    assert main(["--published", "--config", logged["config"], *sets]) == 2
    assert "--published: no published weights under trainer.state_dir" in capsys.readouterr().err
    assert main(["--config", logged["config"]]) == 2
    assert "checkpoints: name at least one, or --published" in capsys.readouterr().err
    settings = settings_from_config(logged["config"], [f"trainer.state_dir={tmp_path / 'trainer'}", "rollout.enabled=false"])
    trainer = ContinuousTrainer(settings)  # the service's trainer on its store, gate off: every update is published
    while trainer.train_once(limit=512) is not None:
        pass
    trainer.close()
    version, weights = latest_published(str(tmp_path / "trainer"))
    assert main(["--published", "--config", logged["config"], *sets, "--json"]) == 0
    (est,) = json.loads(capsys.readouterr().out)["estimates"]
    assert est["policy"] == f"published v{version}" and version >= 3
    served_now = RoutingPolicy.load(logged["strong"])
    load_policy_state(served_now.module, weights)
    truth = _true_value(served_now, logged, greedy=False)
    assert abs(est["value"] - truth) <= est["half_width"], (est, truth)


def test_rewards_retention_archived_are_replayed_and_judged_as_if_they_had_stayed(logged, capsys, tmp_path):
    """A copy of the store whose oldest rewards retention moved to an archive: `--archive` reads
    them back, so `barp ope` gives the same estimates and `barp replay` the same weights as on the
    whole store; without it the tools see what the database still holds, and a config without an
    archive refuses `--archive` in one line."""
    import shutil

    import torch

    from barp_ray.policy import RoutingPolicy
    from serve.feedback_archive import FeedbackArchive
    from serve.feedback_store import FeedbackStore, RewardReader
    from serve.log_replay import main as replay
    from serve.offpolicy_eval import main as ope

    config = yaml.safe_load(open(logged["config"]))["applications"][0]["args"]
    shutil.copytree(config["log_dir"], tmp_path / "log")
    RewardReader(tmp_path / "log").commit_offset(ROUNDS + GREEDY_ROUNDS)
    store = FeedbackStore(tmp_path / "log", tau=0.01)
    assert store.prune(keep=500, max_age_s=None, trained_only=True, archive=FeedbackArchive(str(tmp_path / "archive")), batch=520) == 1040
    pruned = ["--set", f"log_dir={tmp_path / 'log'}", "--set", f"retention.archive={tmp_path / 'archive'}"]

    def judged(*extra):
        assert ope([logged["strong"], "--config", logged["config"], "--last", "2000", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    whole = judged()
    assert judged(*pruned, "--archive") == whole
    assert judged(*pruned)["rounds"] == 460  # the newest 500, 40 of them greedy
    outs = {}
    for name, extra in (("whole", []), ("archived", [*pruned, "--archive"])):
        outs[name] = tmp_path / name
        torch.manual_seed(0)  # the learner's own draws (dropout); the rounds and minibatches come from the log
        assert replay([logged["weak"], "--out", str(outs[name]), "--config", logged["config"], "--batch", "512", *extra]) == 0
        capsys.readouterr()
    metas = [json.loads((outs[n] / "barp_meta.json").read_text())["replayed"] for n in ("whole", "archived")]
    assert metas[0]["through_id"] == metas[1]["through_id"] == ROUNDS + GREEDY_ROUNDS and metas[0]["updates"] == metas[1]["updates"]
    weights = [RoutingPolicy.load(str(outs[n])).module.state_dict() for n in ("whole", "archived")]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.allclose(value, weights[1][key], atol=1e-6), key
    assert ope([logged["strong"], "--config", logged["config"], "--archive"]) == 2
    assert capsys.readouterr().err.strip() == "barp ope: error: --archive: the serve config sets no retention.archive"


def test_a_checkpoint_is_judged_under_live_decision_settings(logged, capsys):
    """`--decision`: each checkpoint also under the settings a live offer can set (decision
    shrinkage, its gate, the price multiplier), each estimate covering that setting's true value;
    the checkpoint's own settings come back after; a setting its head cannot take is one line."""
    from barp_ray.policy import RoutingPolicy
    from serve.offpolicy_eval import main

    assert main([logged["strong"], "--config", logged["config"], "--decision", "shrinkage=0",
                 "--decision", "shrinkage=0.5,gate=cost", "--json"]) == 0
    estimates = json.loads(capsys.readouterr().out)["estimates"]
    assert [e["policy"] for e in estimates] == [logged["strong"], f"{logged['strong']} [shrinkage=0]",
                                                f"{logged['strong']} [shrinkage=0.5,gate=cost]"]
    truths = []
    for est, (k, gate) in zip(estimates, [(1.0, "none"), (0.0, "none"), (0.5, "cost")]):
        policy = RoutingPolicy.load(logged["strong"])
        policy.module.set_decision_shrinkage(k, gate)
        truths.append(_true_value(policy, logged, greedy=False))
        assert abs(est["value"] - truths[-1]) <= est["half_width"], (est, truths[-1])
    assert truths[0] > truths[1] + 0.02, truths  # the setting was applied: every prompt read as the average one routes worse
    from serve.offpolicy_eval import OpeError, deciding

    policy = RoutingPolicy.load(logged["strong"])
    with deciding(policy, {"shrinkage": 0.25, "gate": "cost"}, "x"):
        assert (policy.module.decision_shrinkage, policy.module.decision_shrinkage_gate) == (0.25, "cost")
    assert (policy.module.decision_shrinkage, policy.module.decision_shrinkage_gate) == (1.0, "none")
    with pytest.raises(OpeError), deciding(policy, {"shrinkage": 2.0}, "shrinkage=2"):
        pass
    assert policy.module.decision_shrinkage == 1.0
    assert main([logged["strong"], "--config", logged["config"], "--decision", "cost_multiplier=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("barp ope: error: --decision cost_multiplier=3: decision_cost_multiplier:") and "\n" not in err, err
    assert main([logged["strong"], "--config", logged["config"], "--decision", "temperature=2"]) == 2
    assert "--decision: expected key=value pairs of ['shrinkage', 'gate', 'cost_multiplier']" in capsys.readouterr().err
