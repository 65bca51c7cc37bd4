"""`barp eval`: evaluate BaRP against baselines on a config's test split; write results.md, results.json, cost_quality.png.

    barp eval --config configs/llmrouter.yaml --seeds 3 --out docs/results/llmrouter_id
    barp eval --config configs/llmrouter.yaml --checkpoint checkpoints/barp-llmrouter --out results/one
    barp eval --quick                       # small smoke run on the embedded synthetic world
    barp eval --render docs/results/llmrouter_id/results.json   # re-derive and redraw from saved points

Without --checkpoint, BaRP is trained once per seed (checkpoints under eval.checkpoint_root).
Bad input fails in one line naming the field, exit code 2, no traceback.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from barp_ray.config import ConfigError, apply_overrides, load_config, with_head  # noqa: E402
from barp_ray.data.table import DataError  # noqa: E402
from barp_ray.evaluation.config import apply_eval_overrides, load_eval_config  # noqa: E402

PROG = "barp eval"
QUICK_TRAIN = {"training.iterations": 20, "training.rounds_per_iteration": 2048}
QUICK_EVAL = {"bandit_rounds": 40_000, "mlp_max_epochs": 25}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--config", help="training YAML: data, split, env, BaRP training (default: the synthetic world)")
    p.add_argument("--eval-config", help="YAML with an 'eval:' section (default: built-in EvalConfig values)")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override a training field (training.lr=..., env.preference.kind=...) or an eval field (eval.seeds=...)",
    )
    p.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                   help="evaluate this trained BaRP checkpoint instead of training (repeat: one per seed)")
    p.add_argument("--seeds", type=int, help="BaRP trainings / baseline seeds (default: eval.seeds, 3)")
    p.add_argument("--default-preference", metavar="WQ,WC", help="the preference the summary is reported at (default: env.eval_preference)")
    p.add_argument("--out", help="results folder (default: results/<config name>)")
    p.add_argument("--name", help="label for tables and checkpoints (default: the --out folder's name)")
    p.add_argument("--quick", action="store_true", help="smoke run: short training, few bandit rounds, 1 seed unless --seeds")
    p.add_argument("--no-progress", action="store_true", help="plain log lines only, no progress bars")
    p.add_argument("--render", metavar="RESULTS_JSON",
                   help="recompute the derived figures and rewrite results.md/.json/.png next to a saved results.json; no training")
    return p.parse_args(argv)


def build_configs(args: argparse.Namespace):
    """Training config, eval config, checkpoints: everything validated before any work starts."""
    from envs.preference import check_simplex

    train_sets = [s for s in args.set if not s.startswith("eval.")]
    eval_sets = [s for s in args.set if s.startswith("eval.")]
    train_cfg = load_config(args.config, train_sets)  # the overrides before any check: a job's data.path
    eval_cfg = load_eval_config(args.eval_config)
    if args.quick:  # short training, unless a --set of the user's asks otherwise (it is applied after the caps)
        caps = [f"{k}={min(v, _get(train_cfg, k))}" for k, v in QUICK_TRAIN.items()]
        train_cfg = apply_overrides(train_cfg, caps + train_sets)
        eval_sets = [f"eval.{k}={v}" for k, v in QUICK_EVAL.items()] + (["eval.seeds=1"] if args.seeds is None else []) + eval_sets
    if args.seeds is not None:
        eval_sets.append(f"eval.seeds={args.seeds}")
    if args.default_preference is not None:
        try:
            wq, wc = check_simplex(args.default_preference.replace(" ", "").split(","), "--default-preference")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        eval_sets.append(f"eval.default_preference=[{wq}, {wc}]")
    if eval_sets:
        eval_cfg = apply_eval_overrides(eval_cfg, eval_sets)
    for head in eval_cfg.compare_heads:
        if args.checkpoint:
            raise ConfigError("eval.compare_heads: the compared heads are trained in the run; not with --checkpoint")
        if head == train_cfg.policy.head:
            raise ConfigError(f"eval.compare_heads: {head!r} is already the training config's policy.head")
        try:
            with_head(train_cfg, head)
        except ConfigError as e:
            raise ConfigError(f"eval.compare_heads: {head}: {e}") from None
    if args.checkpoint and args.seeds is not None and args.seeds != len(args.checkpoint):
        raise ConfigError(f"--seeds: {args.seeds} seeds asked for but {len(args.checkpoint)} --checkpoint given (one per seed)")
    return train_cfg, eval_cfg


def _get(cfg, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def check_checkpoints(paths: list[str]) -> None:
    """Fail before data loading and training if a checkpoint cannot be loaded at all."""
    from barp_ray.policy import RoutingPolicy

    for p in paths:
        RoutingPolicy.load(p)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    ray_was_up = _ray_is_up()
    try:
        from barp_ray.evaluation.experiment import run_evaluation
        from barp_ray.evaluation.report import write_report
        from barp_ray.evaluation.results import ResultsError, derive
        from barp_ray.policy import CheckpointError

        try:
            if args.render:
                return render(args.render)
            train_cfg, eval_cfg = build_configs(args)
            check_checkpoints(args.checkpoint)
            out = Path(args.out or Path("results") / (Path(args.config).stem if args.config else "synthetic"))
            name = args.name or out.name
            raw = run_evaluation(train_cfg, eval_cfg, args.checkpoint or None, name=name, progress=not args.no_progress)
            res = derive(raw)
            paths = write_report(res, out, command=" ".join(["barp", "eval", *map(shlex.quote, argv)]))
        except (ConfigError, DataError, CheckpointError, ResultsError) as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
        print_summary(res)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    finally:
        if not ray_was_up:
            _shutdown_ray()


def render(path: str) -> int:
    """Re-derive from the raw points stored in a results.json and rewrite the report beside it (the command is kept)."""
    from barp_ray.evaluation.report import write_report
    from barp_ray.evaluation.results import derive, load_results

    res = derive(load_results(path))
    paths = write_report(res, Path(path).parent, command=res.get("command"))
    print_summary(res)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def print_summary(res: dict) -> None:
    from barp_ray.evaluation.report import fmt_mean_std, ordered

    di = [tuple(p) for p in res["preferences"]].index(tuple(res["default_preference"]))
    print(f"\n{res['name']}: test split at w={res['default_preference']}  (reward / score / $ per 1k queries / AIQ)")
    for n in ordered(res):
        st = res["routers"][n]["stats"]
        print(f"  {n:<34s} {fmt_mean_std(st['reward'][di]):>18s}  {fmt_mean_std(st['quality'][di]):>18s}  "
              f"{fmt_mean_std(st['cost'][di], scale=1000):>18s}  {fmt_mean_std(st['aiq']):>18s}")
    for key in ("best_full_information_router", "largest_model"):
        row = res["summary"].get(key)
        if row:
            print(f"BaRP vs {key} ({', '.join(sorted(set(row['router_per_seed'])))}): reward "
                  f"{fmt_mean_std(row['reward']['relative'], pct=True)}, score {fmt_mean_std(row['quality']['relative'], pct=True)}")


def _ray_is_up() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:
        return False


def _shutdown_ray() -> None:
    """Stop the Ray instance this command started (training starts one); never someone else's."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
