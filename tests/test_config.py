import subprocess
import sys
from pathlib import Path

import pytest

from barp_ray.config import ConfigError, apply_overrides, from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_and_shipped_configs_load(tmp_path, monkeypatch):
    import yaml

    from barp_ray.evaluation.config import load_eval_config

    assert load_config(None).data.source == "synthetic"
    monkeypatch.chdir(ROOT)  # shipped configs use paths relative to the repository root

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("serve"):
            continue  # Serve's own format, checked by tests/test_serve.py
        if path.name.startswith("eval"):
            load_eval_config(path)
            continue
        raw = yaml.safe_load(path.read_text())
        data_path = (raw.get("data") or {}).get("path")
        if data_path and not Path(data_path).exists():
            # an input the config's own comment says how to make (e.g. runs/*.parquet): check the rest
            stand_in = tmp_path / Path(data_path).name
            stand_in.write_text("")
            raw["data"]["path"] = str(stand_in)
        from_dict(raw, where=str(path))


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"training": {"lr": -1}}, "training.lr"),
        ({"data": {"split": "per_task", "test_repeat_share": {"gpqa": 1.5}}}, "data.test_repeat_share.gpqa"),
        ({"data": {"split": "per_task", "test_repeat_share": ["gpqa"]}}, "data.test_repeat_share"),
        ({"data": {"test_repeat_share": {"gpqa": 0.5}}}, "data.test_repeat_share"),  # random split: nothing to repeat
        ({"training": {"lr": "fast"}}, "training.lr"),
        ({"training": {"iterations": 0}}, "training.iterations"),
        ({"training": {"baseline": "q-learning"}}, "training.baseline"),
        ({"training": {"advantage_scale": "per-task"}}, "training.advantage_scale"),
        ({"training": {"critic_temperature": 0}}, "training.critic_temperature"),
        ({"training": {"critic_shrinkage": 1.5}}, "training.critic_shrinkage"),
        ({"training": {"critic_shrinkage": 0.5}}, "training.critic_shrinkage"),  # no reward-shaped critic
        ({"training": {"critic_shrinkage_gate": "price"}}, "training.critic_shrinkage_gate"),
        ({"training": {"critic_shrinkage_gate": "cost"}}, "training.critic_shrinkage_gate"),  # nothing to gate at k = 1
        ({"training": {"correction_coeff": -0.1}}, "training.correction_coeff"),
        ({"training": {"correction_coeff": 0.5}}, "training.correction_coeff"),  # no critic to correct
        ({"training": {"entropy_coeff_final": -0.01}}, "training.entropy_coeff_final"),
        ({"policy": {"decision_shrinkage": 1.5}}, "policy.decision_shrinkage"),
        ({"policy": {"decision_shrinkage": 0.5, "head": "model_conditioned"}}, "policy.decision_shrinkage"),
        ({"policy": {"decision_shrinkage_gate": "price", "decision_shrinkage": 0.5}}, "policy.decision_shrinkage_gate"),
        ({"policy": {"decision_shrinkage_gate": "cost"}}, "policy.decision_shrinkage_gate"),  # nothing to gate at k = 1
        ({"policy": {"decision_cost_multiplier": 0}}, "policy.decision_cost_multiplier"),
        ({"policy": {"decision_cost_multiplier": "high"}}, "policy.decision_cost_multiplier"),
        ({"policy": {"decision_cost_multiplier": 2, "head": "concat"}}, "policy.decision_cost_multiplier"),
        ({"training": {"entropy_coeff": -0.1}}, "training.entropy_coeff"),
        ({"training": {"validation_fraction": 0.8}}, "training.validation_fraction"),
        ({"training": {"validation_fraction": "some"}}, "training.validation_fraction"),
        ({"training": {"validate_every": 0}}, "training.validate_every"),
        ({"training": {"weight_decay": -0.1}}, "training.weight_decay"),
        ({"training": {"average_from": 1.5}}, "training.average_from"),
        ({"training": {"average_from": 0.5, "validation_fraction": 0.1}}, "training.average_from"),
        ({"training": {"lr_final": 0}}, "training.lr_final"),
        ({"training": {"baseline": "critic", "critic_form": "known_cost"}}, "training.critic_form"),
        ({"training": {"lr": "1e-4x"}}, "training.lr"),
        ({"policy": {"head": "cost"}}, "policy.head"),
        ({"policy": {"quality_gate": "yes"}}, "policy.quality_gate"),
        ({"encoder": {"text_stats": "yes"}}, "encoder.text_stats"),
        ({"policy": {"cost_scale": 0}}, "policy.cost_scale"),
        ({"training": {"learning_rate": 0.1}}, "training"),
        ({"trainig": {}}, "trainig"),
        ({"env": {"tau": 0}}, "env.tau"),
        ({"env": {"tau": "cheap"}}, "env.tau"),
        ({"env": {"preference": {"kind": "normal"}}}, "env.preference.kind"),
        ({"env": {"eval_preference": [0.9, 0.3]}}, "env.eval_preference"),
        ({"data": {"source": "csv"}}, "data.source"),
        ({"data": {"source": "llmrouter"}}, "data.path"),
        ({"data": {"source": "records", "path": "/nonexistent/x.jsonl"}}, "data.path"),
        ({"data": {"split": "tasks"}}, "data.held_out_tasks"),
        ({"data": {"test_fraction": 1.5}}, "data.test_fraction"),
        ({"data": {"test_per_task": 0}}, "data.test_per_task"),
        ({"data": {"test_tasks": [""]}}, "data.test_tasks"),
        ({"data": {"output_tokens": {"math": -5}}}, "data.output_tokens.math"),
        ({"scale": {"num_env_runners": -1}}, "scale.num_env_runners"),
        ({"scale": {"num_env_runners": 1.5}}, "scale.num_env_runners"),
        ({"policy": {"head_hidden": []}}, "policy.head_hidden"),
        ({"policy": {"critic_hidden": [0]}}, "policy.critic_hidden"),
        ({"policy": {"conditioning": "gated"}}, "policy.conditioning"),
        ({"policy": {"hidden_dropout": 1.0}}, "policy.hidden_dropout"),
        ({"policy": {"hidden_dropout": 0.3, "conditioning": "film"}}, "policy.hidden_dropout"),
        ({"policy": {"critic_dropout": -0.1}}, "policy.critic_dropout"),
        ({"policy": {"critic_dropout": 0.5}}, "policy.critic_dropout"),  # no reward-shaped critic
        ({"policy": {"members": 0}}, "policy.members"),
        ({"policy": {"members": 2.5}}, "policy.members"),
        ({"policy": {"members": 2, "head": "model_conditioned"}}, "policy.members"),
        ({"policy": {"head": "model_conditioned"}, "training": {"baseline": "critic", "critic_form": "reward",
                                                               "critic_shrinkage": 0.85}}, "training.critic_shrinkage"),
        ({"env": {"prompt_sampling": "tasks"}}, "env.prompt_sampling"),
        ({"policy": {"conditioning": "film", "head": "model_conditioned"}}, "policy.conditioning"),
        ({"output": {"log_every": 0}}, "output.log_every"),
        ({"data": "synthetic"}, "data"),
    ],
)
def test_each_bad_field_names_itself(raw, field):
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    assert field in str(e.value)
    assert "\n" not in str(e.value)


def test_overrides_parse_yaml_values():
    cfg = apply_overrides(load_config(None), ["training.lr=0.01", "data.held_out_tasks=[a, b]", "scale.num_env_runners=2"])
    assert cfg.training.lr == 0.01 and cfg.data.held_out_tasks == ["a", "b"] and cfg.scale.num_env_runners == 2
    with pytest.raises(ConfigError, match="training.lr"):
        apply_overrides(cfg, ["training.lr=-3"])



def test_a_dotted_override_edits_one_key_of_a_mapping_field(tmp_path):
    """`env.preference` is a mapping: `--set env.preference.kind=dirichlet` must keep its other keys
    (it was refused as an unknown field `preference.kind`), and a key below a scalar names the field."""
    cfg = apply_overrides(load_config(None), ["env.preference.kind=dirichlet", "env.preference.alpha=[0.5, 0.3]"])
    assert cfg.env.preference == {"kind": "dirichlet", "alpha": [0.5, 0.3]}
    with pytest.raises(ConfigError, match=r"env\.preference\.kind must be one of"):
        apply_overrides(cfg, ["env.preference.kind=zzz"])
    with pytest.raises(ConfigError, match=r"training\.lr: is not a mapping"):
        apply_overrides(cfg, ["training.lr.x=1"])
    file = tmp_path / "no_preference.yaml"
    file.write_text("training:\n  iterations: 3\n")  # the field left out: the dotted key edits its default
    loaded = load_config(file, ["env.preference.alpha=[2, 2]"])
    assert loaded.env.preference == {"kind": "uniform", "alpha": [2, 2]} and loaded.training.iterations == 3

def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "barp_ray.train", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_cli_bad_config_is_one_line_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: -0.5\n")
    out = _cli("--config", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip() == "barp-train: error: training.lr: must be > 0, got -0.5"
    assert "Traceback" not in out.stderr + out.stdout


def test_cli_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("training: [unclosed\n")
    out = _cli("--config", str(bad))
    assert out.returncode == 2 and "invalid YAML" in out.stderr and "Traceback" not in out.stderr
    out = _cli("--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr


def test_a_data_path_without_a_source_that_reads_it_is_refused():
    """The default source is the synthetic world; `--set data.path=my.jsonl` alone trained on it."""
    with pytest.raises(ConfigError, match=r"data\.path: .* data\.source is 'synthetic'"):
        apply_overrides(load_config(None), ["data.path=routes.jsonl"])


def test_cli_bad_override_names_field():
    out = _cli("--set", "scale.num_learners=-2")
    assert out.returncode == 2
    assert "scale.num_learners" in out.stderr and "Traceback" not in out.stderr


def test_overrides_replace_a_config_files_values_before_they_are_checked(tmp_path):
    """A cluster job runs in a copy of the working directory, where the file's relative data.path
    does not exist; the documented `ray job submit ... --set data.path=<absolute>` must not fail on
    the path it replaces (it did, in both CLIs). Proven here without training: the next error named
    is a later field's."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text("data:\n  source: records\n  path: ../not-here/routes.jsonl\ntraining:\n  iterations: 7\n")
    routes = tmp_path / "routes.jsonl"
    routes.write_text("")
    with pytest.raises(ConfigError, match="data.path"):
        load_config(cfg)
    loaded = load_config(cfg, [f"data.path={routes}", "scale.num_env_runners=1"])
    assert (loaded.data.path, loaded.training.iterations, loaded.scale.num_env_runners) == (str(routes), 7, 1)
    out = _cli("--config", str(cfg), "--set", f"data.path={routes}", "--set", "training.lr=-1")
    assert out.returncode == 2 and out.stderr.strip() == "barp-train: error: training.lr: must be > 0, got -1.0", out.stderr
    # barp eval in its own process: importing Ray in this one would bind its log handlers to a captured stream
    out = subprocess.run([sys.executable, "-m", "barp_ray.cli", "eval", "--config", str(cfg), "--set", f"data.path={routes}",
                          "--set", "training.lr=-1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == "barp eval: error: training.lr: must be > 0, got -1.0", out.stderr


def test_cli_bad_data_file_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "routes.jsonl"
    bad.write_text('{"prompt": "hi", "scores": {"a": 0.5, "b": 1.7}, "costs": {"a": 0.0, "b": 0.1}}\n')
    out = _cli("--set", "data.source=records", "--set", f"data.path={bad}")
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("barp-train: error:") and "routes.jsonl" in err and "1.7" in err
    assert "Traceback" not in out.stderr


def test_exponent_floats_are_floats():
    """YAML 1.1 (PyYAML) reads `lr: 1e-4` as the string '1e-4'; a float field takes it as 0.0001."""
    cfg = from_dict({"training": {"lr": "1e-4", "lr_final": "2.5E-6"}})
    assert cfg.training.lr == 1e-4 and cfg.training.lr_final == 2.5e-6


def test_a_compared_head_that_cannot_take_the_known_cost_critic_gets_the_reward_shaped_one():
    from barp_ray.config import with_head

    cfg = from_dict({"policy": {"head": "cost_aware"}, "training": {"baseline": "critic", "critic_form": "known_cost"}})
    assert with_head(cfg, "price_aware").training.critic_form == "reward"
    assert with_head(cfg, "price_aware").policy.head == "price_aware"
    plain = from_dict({"policy": {"head": "cost_aware"}, "training": {"baseline": "critic", "critic_form": "free"}})
    assert with_head(plain, "concat").training.critic_form == "free"


def test_the_shipped_llmrouter_configs_compare_against_the_model_conditioned_head():
    """`barp eval --set 'eval.compare_heads=[model_conditioned]'` and bench/new_model.py start from
    the shipped configs, whose critic dropout (and an ensemble) that head cannot take."""
    from barp_ray.config import with_head

    for name in ("llmrouter.yaml", "llmrouter_ood.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        other = with_head(cfg, "model_conditioned")
        assert other.policy.head == "model_conditioned" and other.policy.critic_dropout == 0.0
        assert other.policy.members == 1 and other.training.critic_form == "reward" and other.training.critic_shrinkage == 1.0
        assert other.training.rounds_per_iteration == cfg.training.rounds_per_iteration // cfg.policy.members
        assert other.training.iterations == cfg.training.iterations  # the rest of the training is the same
    ensemble = from_dict({"policy": {"head": "cost_aware", "members": 3}, "training": {"rounds_per_iteration": 12288}})
    one = with_head(ensemble, "model_conditioned")
    assert (one.policy.members, one.training.rounds_per_iteration) == (1, 4096)
    assert with_head(ensemble, "price_aware").policy.members == 3  # a fixed-K head keeps the ensemble
