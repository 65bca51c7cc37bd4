"""`barp eval` end to end on a small synthetic world: real Ray, real encoder, real RLlib training."""
import json

import numpy as np
import pytest

from barp_ray import cli
from barp_ray.evaluation import cli as eval_cli
from barp_ray.evaluation.report import markdown
from barp_ray.evaluation.results import ResultsError, load_results
from barp_ray.policy import read_meta

SMALL = [
    "--set", "data.synthetic_prompts=1200",  # the same world as tests/test_training.py: embeddings are cached once
    "--set", "training.iterations=15",
    "--set", "training.rounds_per_iteration=2048",
    "--set", "scale.num_envs_per_env_runner=512",
    "--set", "output.log_every=15",
    "--set", "eval.bandit_rounds=20000",
    "--set", "eval.mlp_max_epochs=15",
    "--no-progress",
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from conftest import start_local_ray

    start_local_ray()
    tmp = tmp_path_factory.mktemp("eval")
    code = eval_cli.main([*SMALL, "--set", f"eval.checkpoint_root={tmp / 'ckpt'}", "--set", "eval.compare_heads=[model_conditioned]",
                          "--seeds", "2", "--out", str(tmp / "res")])
    assert code == 0
    return tmp


def test_results_are_written_and_reload(evaluated):
    res_dir = evaluated / "res"
    assert {p.name for p in res_dir.iterdir()} == {"results.json", "results.md", "cost_quality.png"}
    assert (res_dir / "cost_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = load_results(res_dir / "results.json")
    assert res["seeds"] == [0, 1] and len(res["preferences"]) == 11
    assert res["default_preference"] == [0.8, 0.2]
    families = {e["family"] for e in res["routers"].values()}
    assert {"full information", "bandit feedback", "single model", "reference"} <= families
    for name in ("BaRP", "kNN", "score MLP", "best-label classifier", "ε-greedy (linear)", "LinUCB", "linear Thompson", "random", "oracle"):
        runs = res["routers"][name]["runs"]
        assert len(runs) == 2 and all(len(r["points"]) == 11 for r in runs), name
    # the compared head: trained in the same run on the same split and seeds, a row of its own
    other = res["routers"]["BaRP (model_conditioned)"]
    assert other["family"] == res["routers"]["BaRP"]["family"] and len(other["runs"]) == 2
    for run in other["runs"]:
        assert read_meta(run["details"]["checkpoint"])["config"]["policy"]["head"] == "model_conditioned"
        assert run["details"]["checkpoint"] != res["routers"]["BaRP"]["runs"][run["seed"]]["details"]["checkpoint"]
    text = (res_dir / "results.md").read_text()
    assert "BaRP (model_conditioned)" in text
    assert "full information" in text and "not verified" in text and "barp eval" in text
    # the report is a pure function of the JSON: re-rendering the reloaded file gives the same Markdown
    assert markdown(res, res["command"]) == text


def test_summary_is_computed_from_the_stored_points(evaluated):
    res = load_results(evaluated / "res" / "results.json")
    di = [tuple(w) for w in res["preferences"]].index((0.8, 0.2))
    largest = res["data"]["largest_model"]
    barp = [run["points"][di]["reward"] for run in res["routers"]["BaRP"]["runs"]]
    big = [run["points"][di]["reward"] for run in res["routers"][largest]["runs"]]
    expected = [(a - b) / abs(b) for a, b in zip(barp, big)]
    assert res["summary"]["largest_model"]["reward"]["relative_per_seed"] == pytest.approx(expected)
    # the oracle bounds every router at every preference
    oracle = np.asarray([[p["reward"] for p in r["points"]] for r in res["routers"]["oracle"]["runs"]])
    for name, e in res["routers"].items():
        got = np.asarray([[p["reward"] for p in r["points"]] for r in e["runs"]])
        assert (got <= oracle + 1e-9).all(), name


def test_paired_differences_agree_with_the_stored_means(evaluated):
    """The paired comparison is computed from per-prompt rewards that are not saved: its mean
    difference at each preference must equal the difference of the saved mean rewards."""
    res = load_results(evaluated / "res" / "results.json")
    paired = res["paired"]
    assert set(paired) == {"kNN", "score MLP", "best-label classifier", "best single model",
                           "best single model (chosen on train)"}
    barp = np.asarray([[p["reward"] for p in r["points"]] for r in res["routers"]["BaRP"]["runs"]]).mean(axis=0)
    for name in ("kNN", "score MLP"):
        theirs = np.asarray([[p["reward"] for p in r["points"]] for r in res["routers"][name]["runs"]]).mean(axis=0)
        assert paired[name]["mean"] == pytest.approx(barp - theirs, abs=1e-9), name
        assert all(lo <= m <= hi for m, lo, hi in zip(paired[name]["mean"], paired[name]["low"], paired[name]["high"]))
    singles = [n for n, e in res["routers"].items() if e["family"] == "single model"]
    best = np.max([[p["reward"] for p in res["routers"][n]["runs"][0]["points"]] for n in singles], axis=0)
    assert paired["best single model"]["mean"] == pytest.approx(barp - best, abs=1e-9)
    # The train-picked single model: named per preference, and its paired mean is BaRP minus that model's saved mean.
    picks = res["best_single_on_train"]
    assert len(picks) == len(res["preferences"]) and set(picks) <= set(singles)
    picked = [res["routers"][m]["runs"][0]["points"][i]["reward"] for i, m in enumerate(picks)]
    assert paired["best single model (chosen on train)"]["mean"] == pytest.approx(barp - np.asarray(picked), abs=1e-9)
    # never above the test-picked one, which is the best of the same models on these prompts
    assert all(m >= b - 1e-12 for m, b in zip(paired["best single model (chosen on train)"]["mean"], barp - best))
    assert "Paired over the test prompts" in (evaluated / "res" / "results.md").read_text()


def test_a_given_checkpoint_is_evaluated_without_training(evaluated, capsys):
    ckpt = evaluated / "ckpt" / "res" / "seed-0"
    code = eval_cli.main([*SMALL, "--checkpoint", str(ckpt), "--out", str(evaluated / "again")])
    assert code == 0
    assert "checkpoint:" not in capsys.readouterr().out  # train() prints this line; it must not have run
    first = load_results(evaluated / "res" / "results.json")["routers"]["BaRP"]["runs"][0]["points"]
    again = load_results(evaluated / "again" / "results.json")["routers"]["BaRP"]["runs"][0]["points"]
    assert again == first


def test_a_checkpoint_from_another_split_is_refused(evaluated, capsys):
    ckpt = evaluated / "ckpt" / "res" / "seed-0"
    code = eval_cli.main([*SMALL, "--set", "data.test_fraction=0.3", "--checkpoint", str(ckpt), "--out", str(evaluated / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "data.test_fraction" in err and "Traceback" not in err


def _fails(argv, capsys, *needles):
    code = eval_cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("barp eval: error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_bad_checkpoint_path(tmp_path, capsys):
    _fails(["--checkpoint", str(tmp_path / "nope")], capsys, "not a barp-ray checkpoint")
    (tmp_path / "barp_meta.json").write_text("{}")
    _fails(["--checkpoint", str(tmp_path)], capsys, "RLModule state missing")


def test_preferences_off_the_simplex(tmp_path, capsys):
    _fails(["--default-preference", "0.9,0.3"], capsys, "--default-preference", "sum to 1")
    _fails(["--default-preference", "high"], capsys, "--default-preference")
    (tmp_path / "eval.yaml").write_text("eval:\n  default_preference: [0.5, 0.6]\n")
    _fails(["--eval-config", str(tmp_path / "eval.yaml")], capsys, "eval.default_preference")
    _fails(["--set", "env.eval_preference=[1.2, -0.2]"], capsys, "env.eval_preference")


def test_bad_eval_settings(tmp_path, capsys):
    _fails(["--set", "eval.seeds=0"], capsys, "eval.seeds: must be > 0")
    _fails(["--seeds", "0"], capsys, "eval.seeds")
    _fails(["--set", "eval.nope=1"], capsys, "eval: unknown field(s) ['nope']")
    _fails(["--set", "eval.bandit_rounds=lots"], capsys, "eval.bandit_rounds")
    # --no-progress: this one loads the data, and on a cold embedding cache (the test run alone) a bar precedes the error
    _fails(["--no-progress", "--set", "data.synthetic_prompts=1200", "--set", "eval.largest_model=gpt-9"], capsys, "eval.largest_model")
    _fails(["--eval-config", str(tmp_path / "missing.yaml")], capsys, "not found")
    (tmp_path / "ckpt").mkdir()
    _fails(["--seeds", "3", "--checkpoint", str(tmp_path / "ckpt")], capsys, "--seeds")
    _fails(["--set", "eval.compare_heads=[wide]"], capsys, "eval.compare_heads: 'wide' is not a policy head")
    _fails(["--set", "policy.head=price_aware", "--set", "eval.compare_heads=[price_aware]"], capsys,
           "eval.compare_heads: 'price_aware' is already")
    _fails(["--set", "eval.compare_heads=[model_conditioned]", "--checkpoint", str(tmp_path / "ckpt")], capsys,
           "eval.compare_heads", "--checkpoint")


def test_bad_results_file(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(ResultsError, match="not a barp-ray results file"):
        load_results(tmp_path / "r.json")
    (tmp_path / "r.json").write_text("{")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_results(tmp_path / "r.json")


def test_barp_dispatches_eval(capsys):
    assert cli.main(["eval", "--default-preference", "2,3"]) == 2
    assert "--default-preference" in capsys.readouterr().err


def test_example_eval_config_spells_out_the_defaults():
    from pathlib import Path

    from barp_ray.evaluation.config import EvalConfig, load_eval_config

    assert load_eval_config(Path(__file__).parents[1] / "configs" / "eval.yaml") == EvalConfig().validate()


def test_render_rederives_a_saved_results_file(evaluated, tmp_path, capsys):
    import shutil

    shutil.copytree(evaluated / "res", tmp_path / "copy")
    before = json.loads((tmp_path / "copy" / "results.json").read_text())
    (tmp_path / "copy" / "results.md").unlink()
    assert eval_cli.main(["--render", str(tmp_path / "copy" / "results.json")]) == 0
    assert json.loads((tmp_path / "copy" / "results.json").read_text()) == before
    assert (tmp_path / "copy" / "results.md").read_text() == (evaluated / "res" / "results.md").read_text()
    _fails(["--render", str(tmp_path / "none.json")], capsys, "results file not found")


def test_quick_caps_training_but_a_users_set_wins():
    def built(*argv):
        return eval_cli.build_configs(eval_cli.parse_args(list(argv)))[0].training

    quick = built("--quick")
    assert (quick.iterations, quick.rounds_per_iteration) == (20, 2048)
    mine = built("--quick", "--set", "training.iterations=100", "--set", "training.lr=0.002")
    assert (mine.iterations, mine.rounds_per_iteration, mine.lr) == (100, 2048, 0.002)
    assert built("--set", "training.iterations=7").iterations == 7
