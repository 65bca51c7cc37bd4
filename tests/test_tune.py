"""`barp tune`: a real Ray Tune grid of real (tiny) BaRP trainings on the synthetic world."""
import json
from pathlib import Path

import numpy as np
import pytest

from barp_ray.evaluation import tune as barp_tune

TINY = ["--set", "data.synthetic_prompts=300", "--set", "training.iterations=4", "--set", "training.rounds_per_iteration=512"]


def test_a_grid_of_settings_and_seeds_runs_as_tune_trials_and_ranks_by_the_held_out_sweep(ray_local, tmp_path, capsys):
    from barp_ray.config import load_config
    from barp_ray.data.prepare import prepare
    from barp_ray.policy import RoutingPolicy
    from barp_ray.scoring import greedy_actions, score_actions

    rc = barp_tune.main([*TINY, "--grid", "training.lr=[1e-5, 0.03]", "--seeds", "2", "--vary-split", "--out", str(tmp_path)])
    assert rc == 0
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["failed_trials"] == 0 and len(saved["trials"]) == 4
    assert {(t["setting"]["training.lr"], t["seed"]) for t in saved["trials"]} == {(1e-5, 0), (1e-5, 1), (0.03, 0), (0.03, 1)}
    ranked = saved["ranked"]
    assert len(ranked) == 2 and ranked[0]["sweep_reward"] >= ranked[1]["sweep_reward"] and ranked[0]["se"] is not None
    assert "| training.lr=" in capsys.readouterr().out and (tmp_path / "tune.md").is_file()
    # each trial trained what it says, on its seed's own split, and its sweep is the checkpoint's held-out score there
    for t in saved["trials"]:
        meta = json.loads((Path(t["checkpoint_dir"]) / "barp_meta.json").read_text())
        trained = meta["config"]["training"]["lr"], meta["config"]["training"]["seed"], meta["config"]["data"]["seed"]
        assert trained == (t["setting"]["training.lr"], t["seed"], t["seed"])
        data = prepare(load_config(None, ["data.synthetic_prompts=300", f"data.seed={t['seed']}"]))
        module = RoutingPolicy.load(t["checkpoint_dir"]).module
        w = (0.3, 0.7)
        again = score_actions(data.test, greedy_actions(module, data.test_embeddings, w), w, data.tau).reward
        assert again == pytest.approx(t["reward_by_wq"]["0.3"], abs=1e-9)
        assert t["sweep_reward"] == pytest.approx(np.mean(list(t["reward_by_wq"].values())))


@pytest.mark.parametrize("args, error", [
    (["--config", "configs/llmrouter.yaml"], "data.split: 'provided' holds out LLMRouter's test file"),
    (["--grid", "training.lr=[-1]"], "training.lr: must be > 0"),
    (["--grid", "training.lr=0.1"], "--grid training.lr: expected a non-empty list"),
    (["--grid", "training.nosuch=[1]"], "unknown field(s) ['nosuch']"),
    (["--seeds", "0"], "--seeds: must be >= 1"),
])
def test_bad_input_fails_in_one_line_before_any_trial(args, error, capsys, tmp_path):
    assert barp_tune.main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("barp tune: error: ") and error in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "tune.json").exists()


def test_a_trial_reserves_its_env_runners_and_learners(ray_local, tmp_path):
    """A trial with an env runner gets a placement group holding it, and trains there (a trial that
    reserved 1 CPU and then asked for a runner would wait forever on a full cluster)."""
    from barp_ray.config import load_config

    base = load_config(None).to_dict()
    bundles = barp_tune.trial_resources({"base": base, "setting": {"scale.num_env_runners": 2,
                                                                     "scale.num_cpus_per_env_runner": 0.5}}, 1.0).bundles
    assert bundles == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]
    rc = barp_tune.main([*TINY, "--set", "training.iterations=2", "--grid", "scale.num_env_runners=[1]", "--seeds", "1",
                         "--out", str(tmp_path)])
    assert rc == 0 and json.loads((tmp_path / "tune.json").read_text())["trials"][0]["setting"] == {"scale.num_env_runners": 1}
