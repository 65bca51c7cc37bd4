"""Real RLlib training on the embedded synthetic world (small), real encoder, real Ray."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from barp_ray.config import apply_overrides, load_config
from barp_ray.data.prepare import prepare
from barp_ray.policy import CheckpointError, RoutingPolicy
from barp_ray.training.run import train

W = (0.8, 0.2)


def small_config(tmp_path, *extra):
    return apply_overrides(
        load_config(None),
        [
            "data.synthetic_prompts=1200",
            "training.iterations=40",
            "training.rounds_per_iteration=2048",
            "scale.num_envs_per_env_runner=512",
            "output.log_every=20",
            f"output.checkpoint_dir={tmp_path / 'ckpt'}",
            *extra,
        ],
    )


def built_algo(cfg, **kw):
    """The RLlib algorithm train() builds, on the config's own split, for tests that step it by hand."""
    import ray

    from barp_ray.training.run import build_algo_config
    from envs.routing_env import BanditData

    data = prepare(cfg)
    ref = ray.put(BanditData(data.train_embeddings, data.train.scores, data.train.costs, data.train.models))
    return build_algo_config(cfg, ref, data.tau, **kw).build_algo(), data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import start_local_ray

    start_local_ray()
    cfg = small_config(tmp_path_factory.mktemp("train"))
    return cfg, train(cfg, progress=False)


def test_training_beats_uniform_random_by_a_clear_margin(trained):
    _, res = trained
    ev = res.evaluation
    print({k: v["reward"] for k, v in ev.items() if isinstance(v, dict)})
    assert ev["barp"]["reward"] > ev["random"]["reward"] + 0.08
    # and it learned during training, not by luck of the initial weights
    first, last = res.history[0]["train_reward"], res.history[-1]["train_reward"]
    assert last > first + 0.05
    assert res.history[-1]["entropy"] < res.history[0]["entropy"]


def test_checkpoint_roundtrip_gives_identical_probabilities(trained):
    cfg, res = trained
    data = prepare(cfg)
    policy = RoutingPolicy.load(res.checkpoint)
    assert policy.models == data.train.models
    assert policy.tau == pytest.approx(data.tau)
    prefs = np.random.default_rng(0).dirichlet([1, 1], size=data.test.n).astype(np.float32)
    restored = policy.probabilities(data.test_embeddings, prefs)
    import torch

    with torch.no_grad():
        original = res.module.action_probabilities(torch.from_numpy(data.test_embeddings), torch.from_numpy(prefs)).numpy()
    np.testing.assert_array_equal(restored, original)
    np.testing.assert_allclose(restored.sum(1), 1.0, atol=1e-5)


def test_preference_changes_the_routing(trained):
    """One policy, many trade-offs: asking for quality must buy pricier models than asking for thrift."""
    cfg, res = trained
    policy = RoutingPolicy.load(res.checkpoint)
    data = prepare(cfg)

    def expected_cost(w):
        probs = policy.probabilities(data.test_embeddings, np.array(w))
        return float((probs * data.test.costs).sum(1).mean())

    assert expected_cost([1.0, 0.0]) > 1.5 * expected_cost([0.0, 1.0])


def test_route_prompts_with_the_real_encoder(trained, monkeypatch):
    _, res = trained
    from pathlib import Path

    ckpt = Path(res.checkpoint)
    monkeypatch.chdir(ckpt.parent)
    policy = RoutingPolicy.load(ckpt.name)  # a relative path, as users type it
    out = policy.route(["What is 12345 + 67890?", "Write a haiku about rain."], [0.8, 0.2])
    assert len(out) == 2 and set(out) <= set(policy.models)
    prompts = ["What is 12345 + 67890?", "Write a haiku about rain."]
    assert policy.route(prompts, 0.8) == out  # the knob k means (k, 1 - k), as over HTTP
    assert policy.route(prompts, [[0.8, 0.2], [0.8, 0.2]]) == out


@pytest.mark.parametrize("prompts, preference, error", [
    ("What is 2 + 2?", [0.8, 0.2], "prompts: expected a list of strings"),  # a str is not a list of prompts
    ([None], [0.8, 0.2], "prompts: expected a list of strings"),
    (["a"], [2, 3], "preference: weights must be >= 0 and sum to 1"),
    (["a"], 1.5, "preference: a single knob must be a number in"),
    (["a", "b"], [[0.5, 0.5]], "preference: 1 pairs for 2 prompts"),
    (["a"], [0.5, 0.5, 0.0], "preference: expected two numbers"),
])
def test_route_refuses_bad_input_naming_the_argument(trained, prompts, preference, error):
    """It routed a bare string as one prompt per character, an off-simplex pair unnormalised, and a
    knob into a torch shape error."""
    policy = RoutingPolicy.load(trained[1].checkpoint)
    with pytest.raises((TypeError, ValueError), match=error):
        policy.route(prompts, preference)


def _barp_route(*args, stdin: str = ""):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "barp_ray.cli", "route", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_barp_route_routes_arguments_stdin_and_jsonl_as_the_policy_does(trained):
    """The command-line router reads a checkpoint alone (no cluster) and answers as `route` does."""
    ckpt = trained[1].checkpoint
    policy = RoutingPolicy.load(ckpt)
    prompts = ["What is 12345 + 67890?", "Write a haiku about rain."]
    out = _barp_route(ckpt, *prompts, "--preference", "0.3,0.7")
    assert out.returncode == 0 and out.stdout.split() == policy.route(prompts, [0.3, 0.7]), out.stderr
    assert "Traceback" not in out.stderr and "Deprecation" not in out.stderr
    out = _barp_route(ckpt, "--preference", "0.3,0.7", *prompts)  # options before the prompts too
    assert out.returncode == 0 and out.stdout.split() == policy.route(prompts, [0.3, 0.7]), out.stderr
    out = _barp_route(ckpt, "--preference", "1", stdin=prompts[0] + "\n\n" + prompts[1] + "\n")  # a blank line is no prompt
    assert out.stdout.split() == policy.route(prompts, 1.0)
    lines = "".join(json.dumps(r) + "\n" for r in [{"prompt": prompts[0], "preference": [0.0, 1.0]}, {"prompt": prompts[1]}])
    out = _barp_route(ckpt, "--jsonl", "--json", stdin=lines)
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["model"] for r in records] == [policy.route(prompts[:1], 0.0)[0], policy.route(prompts[1:], [0.8, 0.2])[0]]
    assert all(set(r["probabilities"]) == set(policy.models) and abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in records)


@pytest.mark.parametrize("args, stdin, error", [
    (["x", "--preference", "2,3"], "", "--preference: weights must be >= 0 and sum to 1"),
    (["x", "--preference", "abc"], "", "--preference: expected WQ,WC or one knob K"),
    (["--jsonl"], '{"prompt": "x"}\nnot json\n', "line 2: not JSON"),
    (["--jsonl"], '{"prompt": "x", "preference": [3, 1]}\n', "line 1: preference: weights must be"),
    (["--jsonl"], '{"text": "x"}\n', "line 1: prompt: expected a record with a string 'prompt'"),
])
def test_barp_route_refuses_bad_input_in_one_line(trained, args, stdin, error):
    out = _barp_route(trained[1].checkpoint, *args, stdin=stdin)
    assert out.returncode == 2 and out.stderr.startswith(f"barp route: error: {error}"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr and out.stdout == ""


def test_barp_route_names_a_missing_checkpoint(tmp_path):
    out = _barp_route(str(tmp_path / "nope"), "x")
    assert out.returncode == 2 and "not a barp-ray checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_bad_checkpoint_paths(tmp_path):
    with pytest.raises(CheckpointError, match="not a barp-ray checkpoint"):
        RoutingPolicy.load(tmp_path)
    (tmp_path / "barp_meta.json").write_text("{}")
    with pytest.raises(CheckpointError, match="RLModule state missing"):
        RoutingPolicy.load(tmp_path)


def test_critic_variant_trains_through_rllib_and_checkpoints_under_a_storage_uri(ray_local, tmp_path):
    """`training.baseline: critic` (the loss continuous training uses) with the reward-shaped critic
    and an exploration floor, as offline config switches; the checkpoint goes to a `file://` URI
    (the same pyarrow.fs path `s3://` takes) and loads from there, with the decision shrinkage's
    reference prompt (the mean training embedding) in it."""
    uri = f"file://{tmp_path / 'bucket' / 'run-1'}"
    cfg = small_config(tmp_path, "training.baseline=critic", "training.critic_kl_coeff=1.0", "training.iterations=25",
                       "training.critic_form=reward", "training.exploration_floor=0.1", f"output.checkpoint_dir={uri}",
                       "policy.decision_shrinkage=0.5")
    res = train(cfg, progress=False)
    ev = res.evaluation
    assert ev["barp"]["reward"] > ev["random"]["reward"] + 0.08, ev
    assert res.history[-1]["baseline_loss"] < res.history[0]["baseline_loss"]  # the critic learned
    assert res.checkpoint == uri and (tmp_path / "bucket" / "run-1" / "barp_meta.json").is_file()
    policy = RoutingPolicy.load(uri)
    assert policy.module.model_config["critic_form"] == "reward"
    fetched = hashlib.sha1(uri.encode()).hexdigest()[:12]  # local_copy's prefix for this URI's copies
    assert not list((Path(os.environ["BARP_CACHE_DIR"]) / "checkpoints").glob(f"{fetched}-*"))  # gone once the weights were in memory
    mean_embedding = prepare(cfg).train_embeddings.mean(axis=0)
    assert np.allclose(policy.module.reference_embedding.numpy(), mean_embedding, atol=1e-6)
    with pytest.raises(CheckpointError, match="cannot fetch"):
        RoutingPolicy.load(f"file://{tmp_path / 'bucket' / 'no-such-run'}")


def _scalars(event_dir) -> dict[str, list[tuple[int, float]]]:
    """Read TensorBoard event files (TFRecord framing: length, crc, Event proto, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        i = 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i:i + 8])
            event = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_training_curves_are_tensorboard_event_files_in_the_run_directory(trained):
    cfg, res = trained
    curves = _scalars(Path(res.checkpoint) / "tensorboard")
    iterations = cfg.training.iterations
    assert [s for s, _ in curves["train/train_reward"]] == list(range(1, iterations + 1))
    assert curves["train/train_reward"][-1][1] == pytest.approx(res.history[-1]["train_reward"], rel=1e-5)
    assert len(curves["train/entropy"]) == iterations
    for w_q in (0.0, 0.5, 0.8, 1.0):  # held-out reward at a few preferences, every log_every iterations
        points = curves[f"heldout/reward_wq{w_q:.1f}"]
        assert [s for s, _ in points] == [20, 40]
    # the ends of the preference range really are different tasks
    assert curves["heldout/reward_wq0.0"][-1][1] != curves["heldout/reward_wq1.0"][-1][1]


def test_model_conditioned_policy_offers_a_model_it_never_trained_on_and_warm_starts_from_it(trained, tmp_path):
    """Issue 13: train without one model, offer it with its card (zero-shot), then continue training
    with it through the same RLlib learner: the warm-started learner and its rollout workers must
    route exactly as the zero-shot policy does before any feedback."""
    import json
    import shutil

    import ray
    import torch

    from barp_ray.config import ConfigError
    from barp_ray.model_cards import cards_for
    from barp_ray.training.run import build_algo_config, model_cards, warm_start
    from envs.routing_env import BanditData

    common = ["policy.head=model_conditioned", "training.baseline=critic", "training.critic_form=reward",
              "training.critic_kl_coeff=1.0", "training.iterations=8"]
    held = small_config(tmp_path, *common, 'data.exclude_models=["code-15b"]')
    res = train(held, progress=False)
    assert res.evaluation["barp"]["reward"] > res.evaluation["random"]["reward"], res.evaluation
    policy = RoutingPolicy.load(res.checkpoint)
    assert "code-15b" not in policy.models

    full = small_config(tmp_path / "full", *common, f"training.init_from={res.checkpoint}")
    data = prepare(full)
    policy.offer(cards_for(data.train.models, data.train.prices, data.train.sizes))
    assert policy.models == data.train.models and policy.module.offered_ids[data.train.models.index("code-15b")] == 5  # the "unknown" row
    x = data.test_embeddings[:64]
    w = np.tile(np.float32([0.6, 0.4]), (64, 1))
    zero_shot = policy.probabilities(x, w)
    assert zero_shot.shape == (64, 6) and np.allclose(zero_shot.sum(1), 1, atol=1e-5)

    ref = ray.put(BanditData(data.train_embeddings, data.train.scores, data.train.costs, data.train.models))
    algo = build_algo_config(full, ref, data.tau, cards=model_cards(full, data.train)).build_algo()
    try:
        with pytest.raises(ConfigError, match="training.init_from: .*do not fit"):
            warm_start(algo, trained[1].checkpoint)  # a concat-head checkpoint: refused, nothing loaded
        warm_start(algo, res.checkpoint)
        for module in (algo.get_module(), algo.env_runner_group.local_env_runner.module):
            got = module.action_probabilities(torch.from_numpy(x), torch.from_numpy(w)).numpy()
            assert np.allclose(got, zero_shot, atol=1e-5)
    finally:
        algo.stop()
    other = tmp_path / "other-features"
    shutil.copytree(res.checkpoint, other)
    meta = json.loads((other / "barp_meta.json").read_text())
    (other / "barp_meta.json").write_text(json.dumps({**meta, "model_features": ["log_price"]}))
    with pytest.raises(CheckpointError, match="model_features"):
        RoutingPolicy.load(other)


def test_early_stopping_keeps_the_weights_that_route_held_out_train_prompts_best(ray_local, tmp_path):
    """`training.validation_fraction`: held-out train prompts never enter the bandit rounds, and the
    checkpoint holds the weights of the iteration whose held-out sweep reward was best (lr 0.05
    makes the later iterations wander, so that is usually not the last one)."""
    import json

    from barp_ray.training.early_stopping import SWEEP, EarlyStopping, split_prompts

    cfg = small_config(tmp_path, "policy.head=cost_aware", "training.baseline=critic", "training.critic_form=reward",
                       "training.critic_kl_coeff=1.0", "training.iterations=16", "training.lr=0.05",
                       "training.validation_fraction=0.2", "training.validate_every=2")
    res = train(cfg, progress=False)
    meta = json.loads((Path(res.checkpoint) / "barp_meta.json").read_text())
    seen = {h["iteration"]: h["validation_sweep_reward"] for h in res.history if "validation_sweep_reward" in h}
    assert sorted(seen) == list(range(2, 17, 2))
    kept = meta["early_stopping"]["kept_iteration"]
    assert kept == max(seen, key=seen.get) and meta["early_stopping"]["held_out_sweep_reward"] == seen[kept]

    data = prepare(cfg)
    fit, held = split_prompts(data.train.n, 0.2, cfg.training.seed)
    assert len(held) == meta["early_stopping"]["held_out_prompts"] == round(0.2 * data.train.n)
    assert not set(fit) & set(held)
    judge = EarlyStopping(data.train.subset(held), data.train_embeddings[held], data.tau)
    assert len(SWEEP) == 11 and SWEEP[0] == (0.0, 1.0) and SWEEP[-1] == (1.0, 0.0)
    # the saved policy is the kept one: it scores exactly the kept iteration's held-out reward
    assert judge.sweep_reward(RoutingPolicy.load(res.checkpoint).module) == pytest.approx(seen[kept], abs=1e-9)
    print("held-out sweep reward per iteration:", seen, "kept", kept)


def test_weight_decay_switches_the_learner_to_adamw_and_decays_the_weights(ray_local, tmp_path):
    """`training.weight_decay`: the same RLlib learner with AdamW's decoupled decay; 0 keeps Adam."""
    import torch

    norms = {}
    for decay in (0.0, 20.0):
        algo, _ = built_algo(small_config(tmp_path, f"training.weight_decay={decay}", "training.lr=0.01"))
        try:
            opt = next(iter(algo.learner_group._learner._named_optimizers.values()))
            assert type(opt) is (torch.optim.AdamW if decay else torch.optim.Adam)
            for _ in range(3):
                algo.train()
            head = algo.get_module().decision_head[0].weight.detach()
            norms[decay] = float(head.norm())
        finally:
            algo.stop()
    # 3 steps of w -= lr * decay * w = 0.8 w, on top of the same gradient steps
    assert norms[20.0] < 0.7 * norms[0.0], norms


def test_weight_averaging_writes_the_mean_of_the_tail_iterations_weights(ray_local, tmp_path):
    """`training.average_from`: training is deterministic per seed, so the weights a 4-, 5- and
    6-iteration run end with are the 6-iteration run's iterates 4, 5 and 6, and averaging from
    half of 6 iterations must write exactly their mean."""
    import json

    def weights(*extra):
        res = train(small_config(tmp_path / "-".join(extra), *extra), progress=False)
        return res, RoutingPolicy.load(res.checkpoint).module.state_dict()

    tail = [weights(f"training.iterations={n}")[1] for n in (4, 5, 6)]
    res, averaged = weights("training.iterations=6", "training.average_from=0.5")
    meta = json.loads((Path(res.checkpoint) / "barp_meta.json").read_text())
    assert meta["weight_averaging"] == {"from_iteration": 4, "snapshots": 3}
    assert not all(np.allclose(tail[0][k], tail[2][k]) for k in averaged)  # the iterates differ
    for k, v in averaged.items():
        assert v.dtype == tail[0][k].dtype
        np.testing.assert_allclose(v.numpy(), np.mean([t[k].numpy() for t in tail], axis=0), rtol=0, atol=1e-6)


def test_lr_final_decays_the_learner_rate_linearly_over_the_iterations(ray_local, tmp_path):
    algo, _ = built_algo(small_config(tmp_path, "training.iterations=4", "training.lr=0.004", "training.lr_final=0.0001"))
    try:
        opt = next(iter(algo.learner_group._learner._named_optimizers.values()))
        seen = []
        for _ in range(4):
            algo.train()
            seen.append(opt.param_groups[0]["lr"])
    finally:
        algo.stop()
    # the rate an update uses is set from the rounds sampled so far: 1/4, 2/4, ... of the way down
    expected = [0.004 + (0.0001 - 0.004) * i / 4 for i in range(1, 5)]
    np.testing.assert_allclose(seen, expected, rtol=0.02)


def test_entropy_coeff_final_anneals_the_entropy_bonus_with_rllibs_scheduler(ray_local, tmp_path):
    algo, _ = built_algo(small_config(tmp_path, "training.iterations=4", "training.entropy_coeff=0.2",
                                      "training.entropy_coeff_final=0.0"))
    try:
        learner = algo.learner_group._learner
        seen = []
        for _ in range(4):
            algo.train()
            seen.append(float(learner._entropy["default_policy"].get_current_value()))
    finally:
        algo.stop()
    # as the learning rate's schedule: set from the rounds sampled so far, 1/4, 2/4, ... of the way down
    np.testing.assert_allclose(seen, [0.2 * (1 - i / 4) for i in range(1, 5)], atol=1e-6)


def test_an_ensemble_trains_through_rllib_and_routes_by_its_members_mean(ray_local, tmp_path):
    """`policy.members` with member_data "own": one RLlib learner trains the members on the rounds each
    played; the checkpoint loads as one router whose distribution is the members' mean; its serving weights leave the critics out."""
    import torch

    cfg = small_config(tmp_path, "training.baseline=critic", "training.critic_kl_coeff=1.0", "training.critic_form=reward",
                       "training.iterations=25", "policy.members=2", "policy.member_data=own")
    res = train(cfg, progress=False)
    assert res.evaluation["barp"]["reward"] > res.evaluation["random"]["reward"] + 0.08, res.evaluation
    policy = RoutingPolicy.load(res.checkpoint)
    module = policy.module
    from barp_ray.policy import policy_state

    assert len(module.members) == 2 and not any("baseline_head" in k for k in policy_state(module))
    data = prepare(cfg)
    e, w = data.test_embeddings[:64], np.tile(W, (64, 1))
    each = [m.action_probabilities(torch.as_tensor(e), torch.as_tensor(w, dtype=torch.float32)).numpy() for m in module.members]
    assert np.allclose(policy.probabilities(e, w), np.mean(each, axis=0), atol=1e-6)
    assert not np.allclose(each[0], each[1], atol=1e-3)  # two learners, not one
