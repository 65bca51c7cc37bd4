"""`barp tune`: a grid of training settings x seeds as Ray Tune trials, ranked by held-out sweep reward.

    barp tune --config configs/llmrouter_val.yaml --grid training.entropy_coeff=[0.01,0.02,0.05] \\
        --grid training.lr=[5e-4,1e-3] --seeds 3 --out results/tune-entropy

Every trial trains BaRP with its settings and seed and scores greedy routing on the config's
held-out split at the 11-point preference sweep (w_q = 0, 0.1, ..., 1); with `--vary-split` each
seed also draws its own held-out prompts. Settings are ranked by the
sweep mean over seeds, with its standard error, since one seed cannot separate settings a few
thousandths apart. A config that holds out LLMRouter's own test file (`data.split: provided`) is
refused: choices are made on validation (`configs/llmrouter_val*.yaml`), never on test.
Trials run where Ray places them (`ray job submit -- barp tune ...` on a cluster), each on
`--cpus-per-trial` CPUs. Bad input fails in one line naming the field, exit code 2, no traceback.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from barp_ray.config import ConfigError, TrainConfig, apply_overrides, from_dict, load_config  # noqa: E402
from barp_ray.evaluation.experiment import preference_grid  # noqa: E402

PROG = "barp tune"
SWEEP = preference_grid(11, (0.0, 1.0))  # barp eval's 11-point sweep (its default is on the grid)


def parse_grid(items: list[str]) -> list[tuple[str, list]]:
    """`section.field=[a, b, c]` -> (key, values); each value is later checked as an override would be."""
    grid = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--grid {item!r}: expected section.field=[value, ...]")
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--grid {key}: values are not YAML: {text!r}") from None
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {key}: expected a non-empty list [a, b, ...], got {text!r}")
        if key in dict(grid):
            raise ConfigError(f"--grid {key}: given twice")
        grid.append((key, values))
    return grid


def setting_overrides(setting: dict) -> list[str]:
    """One grid point as `--set` strings; values written back as YAML so lists and mappings survive."""
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in setting.items()]


def checked_settings(base: TrainConfig, grid: list[tuple[str, list]]) -> list[dict]:
    """Every grid point, validated against the config now (a bad value fails before any trial) and
    recorded as the config reads it (YAML's `1e-5` is a string until the config makes it a float)."""
    keys = [k for k, _ in grid]
    settings = []
    for combo in itertools.product(*(v for _, v in grid)):
        read = apply_overrides(base, setting_overrides(dict(zip(keys, combo)))).to_dict()
        settings.append({k: _at(read, k) for k in keys})
    return settings


def _at(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def held_out_on_validation(cfg: TrainConfig) -> None:
    if cfg.data.split == "provided":
        raise ConfigError("data.split: 'provided' holds out LLMRouter's test file; tune on a validation split "
                          "(configs/llmrouter_val.yaml and its siblings), never on test")


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Tune runs each trial in its own directory, so a relative data path would point nowhere there."""
    sets = []
    if cfg.data.path and "://" not in cfg.data.path:
        sets.append(f"data.path={Path(cfg.data.path).resolve()}")
    if cfg.training.init_from and "://" not in cfg.training.init_from:
        sets.append(f"training.init_from={Path(cfg.training.init_from).resolve()}")
    return apply_overrides(cfg, sets) if sets else cfg


def run_trial(trial: dict) -> None:
    """One Tune trial: train with its overrides and seed, report per-iteration curves, then the sweep."""
    from ray import tune

    from barp_ray.scoring import greedy_actions, score_actions
    from barp_ray.training.run import train

    trial_dir = Path(tune.get_context().get_trial_dir())
    cfg = apply_overrides(from_dict(trial["base"], where="tune base config"),
                          [*setting_overrides(trial["setting"]), f"training.seed={trial['seed']}",
                           *([f"data.seed={trial['seed']}"] if trial["vary_split"] else []),
                           f"output.checkpoint_dir={trial_dir / 'checkpoint'}"])
    with open(os.devnull, "w") as quiet:
        result = train(cfg, progress=False, out=quiet)
    for row in result.history[:-1]:
        tune.report({"iteration": row["iteration"], "train_reward": row["train_reward"], "entropy": row["entropy"]})
    data = result.data
    by_wq = {str(w[0]): score_actions(data.test, greedy_actions(result.module, data.test_embeddings, w), w, data.tau).reward
             for w in SWEEP}
    last = result.history[-1]
    tune.report({"iteration": last["iteration"], "train_reward": last["train_reward"], "entropy": last["entropy"],
                 "sweep_reward": float(np.mean(list(by_wq.values()))), "reward_by_wq": by_wq,
                 "checkpoint_dir": result.checkpoint})


def trial_resources(trial: dict, cpus: float):
    """One placement group per trial: its driver, and the env runners and learners its config starts
    (as RLlib's own Tune resource request does), so a full cluster queues trials instead of starving
    a started one of its runners."""
    from ray import tune

    scale = apply_overrides(from_dict(trial["base"], where="tune base config"), setting_overrides(trial["setting"])).scale
    gpu = scale.num_gpus_per_learner
    bundles = [{"CPU": cpus, **({"GPU": gpu} if gpu and scale.num_learners == 0 else {})}]
    bundles += [{"CPU": scale.num_cpus_per_env_runner, **scale.custom_resources_per_env_runner}] * scale.num_env_runners
    bundles += [{"CPU": 1, **({"GPU": gpu} if gpu else {})}] * scale.num_learners
    return tune.PlacementGroupFactory(bundles, strategy="PACK")


def rank(trials: list[dict]) -> list[dict]:
    """Per setting: the sweep mean over its seeds, the standard error, the per-w_q means; best first."""
    groups: dict[str, list[dict]] = {}
    for t in trials:
        groups.setdefault(json.dumps(t["setting"], sort_keys=True), []).append(t)
    rows = []
    for key, ts in groups.items():
        sweep = np.array([t["sweep_reward"] for t in ts])
        rows.append({
            "setting": json.loads(key),
            "seeds": sorted(t["seed"] for t in ts),
            "sweep_reward": float(sweep.mean()),
            "se": float(sweep.std(ddof=1) / math.sqrt(len(sweep))) if len(sweep) > 1 else None,
            "reward_by_wq": {str(w[0]): float(np.mean([t["reward_by_wq"][str(w[0])] for t in ts])) for w in SWEEP},
        })
    return sorted(rows, key=lambda r: -r["sweep_reward"])


def table(rows: list[dict]) -> str:
    lines = ["| setting | seeds | sweep reward | ± se |", "| --- | --- | --- | --- |"]
    for r in rows:
        name = ", ".join(f"{k}={json.dumps(v)}" for k, v in r["setting"].items()) or "(the config as is)"
        se = "" if r["se"] is None else f"{r['se']:.4f}"
        lines.append(f"| {name} | {len(r['seeds'])} | {r['sweep_reward']:+.4f} | {se} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--config", help="training YAML with a validation split (default: the synthetic world, its random split)")
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.FIELD=[A,B,...]",
                   help="values to try for one field (repeat: the grid is every combination)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a field in every trial")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per setting (default 3)")
    p.add_argument("--vary-split", action="store_true",
                   help="each seed also draws its own held-out prompts (data.seed = the seed): one draw of a few "
                        "hundred prompts can flatter a setting, several average that out")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs Ray reserves for each trial (default 1)")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default 0: as many as the CPUs allow)")
    p.add_argument("--out", default="results/tune", help="folder for tune.json, tune.md and Tune's own trial folders")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.seeds < 1:
            raise ConfigError(f"--seeds: must be >= 1, got {args.seeds}")
        if not args.cpus_per_trial > 0:
            raise ConfigError(f"--cpus-per-trial: must be > 0, got {args.cpus_per_trial}")
        if args.max_concurrent < 0:
            raise ConfigError(f"--max-concurrent: must be >= 0, got {args.max_concurrent}")
        base = absolute_paths(load_config(args.config, args.set))
        held_out_on_validation(base)
        settings = checked_settings(base, parse_grid(args.grid))
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trials = tune_grid(base, settings, args.seeds, args.vary_split, args.cpus_per_trial, args.max_concurrent, out)
    rows = rank(trials)
    failed = len(settings) * args.seeds - len(trials)
    (out / "tune.json").write_text(json.dumps({"config": args.config, "sets": args.set, "grid": args.grid,
                                               "vary_split": args.vary_split,
                                               "sweep": [w[0] for w in SWEEP], "ranked": rows, "trials": trials,
                                               "failed_trials": failed}, indent=2))
    md = table(rows)
    (out / "tune.md").write_text(md + "\n")
    print(md)
    print(f"\n{len(trials)} trials" + (f", {failed} failed (Tune's log under {out})" if failed else "") + f"; {out / 'tune.json'}")
    return 1 if failed else 0


def tune_grid(base: TrainConfig, settings: list[dict], seeds: int, vary_split: bool, cpus: float, concurrent: int,
              out: Path) -> list[dict]:
    """Runs the trials with Ray Tune; returns one record per finished trial."""
    import ray
    from ray import tune

    if not ray.is_initialized():  # trials' own logs stay in Tune's folders; the table is this command's output
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    space = {"trial": tune.grid_search([{"base": base.to_dict(), "setting": s, "seed": seed, "vary_split": vary_split}
                                        for s in settings for seed in range(seeds)])}
    tuner = tune.Tuner(
        tune.with_resources(lambda config: run_trial(config["trial"]), lambda config: trial_resources(config["trial"], cpus)),
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent or None),
        run_config=tune.RunConfig(name="trials", storage_path=str(out), verbose=0),
    )
    results = tuner.fit()
    trials = []
    for r in results:
        if r.error is not None or "sweep_reward" not in (r.metrics or {}):
            first = str(r.error).strip().splitlines()[-1] if r.error is not None else "no sweep reported"
            print(f"trial {r.config['trial']['setting']} seed {r.config['trial']['seed']} failed: {first}", file=sys.stderr)
            continue
        t = r.config["trial"]
        trials.append({"setting": t["setting"], "seed": t["seed"], "sweep_reward": r.metrics["sweep_reward"],
                       "reward_by_wq": dict(r.metrics["reward_by_wq"]),
                       "checkpoint_dir": r.metrics["checkpoint_dir"]})
    return trials


if __name__ == "__main__":
    sys.exit(main())
