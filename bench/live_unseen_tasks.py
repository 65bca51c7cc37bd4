"""Tasks the router never trained on, served live: does feedback lift it to the best single model at every preference?

    python bench/live_unseen_tasks.py --config configs/llmrouter_ood_val.yaml \
        --checkpoints 'runs/ablation/dshrink0/seed-*' [--rounds 4000] [--keep 0.5] [--cost-multiplier 3] [--out docs/results/live_unseen_tasks]

Offline, on unseen tasks, no router (BaRP or a full-information one) reaches the best single model
*on those tasks* at every preference (docs/results/preference_range_val, three task-held-out folds):
which one model suits new tasks is only learnt from their outcomes. The service learns from exactly
those. This runs the service's learning parts in process, as `bench/live_loop.py` does (the same
`FeedbackStore`, `ContinuousTrainer`, exploring distribution and safe-rollout gate, settings from
configs/serve.yaml), on real outcomes: the held-out tasks of a validation config (never the test file).
Their prompts are split in two halves, once per seed. Clients send prompts of the stream half in
shuffled passes, each with its own preference w_q ~ U(0, 1), and post the logged score and cost of the
routed model. Every `--eval-every` rounds the service's greedy choice is scored on the other half at
the 11-point sweep, against the best single model on that half (hindsight: the issue's bar) and the
one best on the training tasks (what a deployment could have picked beforehand).

`--task T` keeps only task T's held-out prompts. Run on a test config with `--task` it asks whether live
feedback repairs a shift of one test task that no validation draw holds (docs/results/task_shift): a
diagnosis after the fact, not a way to choose a setting.

Prints a table, writes <out>/<label>.json and .png.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.live_loop import InProcessService  # noqa: E402

SWEEP = [round(0.1 * i, 1) for i in range(11)]


def sweep_rewards(module, table, embeddings: np.ndarray, tau: float) -> np.ndarray:
    """[11] the greedy decision's mean reward at each w_q of the sweep."""
    from barp_ray.scoring import greedy_actions, score_actions

    return np.asarray([score_actions(table, greedy_actions(module, embeddings, (q, 1 - q)), (q, 1 - q), tau).reward
                       for q in SWEEP])


def single_model_rewards(pick_on, score_on, tau: float) -> np.ndarray:
    """[11] reward on `score_on` of the single model with the best mean reward on `pick_on`, per w_q."""
    from barp_ray.scoring import best_single_model, reward_matrix

    return np.asarray([reward_matrix(score_on, (q, 1 - q), tau)[:, best_single_model(pick_on, (q, 1 - q), tau)].mean()
                       for q in SWEEP])


def seed_of(checkpoint: str, index: int) -> int:
    """The stream's seed: N for a folder named seed-N (how the ablations save them), else the run's index."""
    match = re.fullmatch(r"seed-(\d+)", Path(checkpoint).name)
    return int(match.group(1)) if match else index


def one_run(checkpoint: str, data, seed: int, rounds: int, eval_every: int, cadence: int, keep: float,
            overrides: list[str], cost_multiplier: float = 1.0) -> dict:
    service = InProcessService(checkpoint, overrides, seed, {"decision_shrinkage": keep, "decision_cost_multiplier": cost_multiplier})
    if list(service.policy.models) != list(data.test.models):
        raise SystemExit(f"{checkpoint}: models {list(service.policy.models)} differ from the config's {list(data.test.models)}")
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(data.test.n)
    stream_rows, eval_rows = np.sort(order[: data.test.n // 2]), np.sort(order[data.test.n // 2:])
    eval_table, eval_x = data.test.subset(eval_rows), data.test_embeddings[eval_rows]
    curve, at = [sweep_rewards(service.served, eval_table, eval_x, data.tau)], [0]
    served_reward, updates, refused, forgets, t0 = [], 0, 0, 0, time.time()
    anchor_ended_at = None  # the round whose update ended trainer.anchor_weight's pull (None: never, or off)
    passes = int(np.ceil(rounds / len(stream_rows)))
    stream = np.concatenate([rng.permutation(stream_rows) for _ in range(passes)])[:rounds]
    for i, row in enumerate(stream):
        wq = float(rng.uniform())
        w = np.asarray([wq, 1.0 - wq], dtype=np.float32)
        _, joined = service.round(data.test_embeddings[row], w, rng,
                                  lambda a: (float(data.test.scores[row, a]), float(data.test.costs[row, a])))
        served_reward.append(float(joined["reward"]))
        if (i + 1) % cadence == 0 and (update := service.update()) is not None:
            updates += 1
            refused += not update["published"]
            forgets += update["forgot"]
            if anchor_ended_at is None and service.trainer.anchor.ended not in (None, "off"):
                anchor_ended_at = {"round": i + 1, "why": service.trainer.anchor.ended}
        if (i + 1) % eval_every == 0:
            curve.append(sweep_rewards(service.served, eval_table, eval_x, data.tau))
            at.append(i + 1)
    service.close()
    return {"seed": seed, "checkpoint": checkpoint, "rounds": at, "curve": np.asarray(curve).tolist(),
            "best_single_hindsight": single_model_rewards(eval_table, eval_table, data.tau).tolist(),
            "best_single_on_train": single_model_rewards(data.train, eval_table, data.tau).tolist(),
            "served_reward_mean": float(np.mean(served_reward)), "anchor_ended": anchor_ended_at, "passes_over_stream": rounds / len(stream_rows),
            "stream_prompts": int(len(stream_rows)), "eval_prompts": int(len(eval_rows)),
            "updates": updates, "refused": refused, "forgets": forgets, "seconds": time.time() - t0}


def summarize(runs: list[dict]) -> list[dict]:
    """Per evaluation point, over seeds: sweep mean and at how many w_q the mean curve is >= each bar."""
    curves = np.asarray([r["curve"] for r in runs])  # [seeds, points, 11]
    hind = np.mean([r["best_single_hindsight"] for r in runs], axis=0)
    train = np.mean([r["best_single_on_train"] for r in runs], axis=0)
    mean = curves.mean(0)
    return [{"round": int(t), "sweep_mean": float(m.mean()), "at_or_above_hindsight_single": int((m >= hind - 1e-12).sum()),
             "at_or_above_train_single": int((m >= train - 1e-12).sum()), "reward_wq1": float(m[-1]),
             "per_seed_at_or_above_hindsight": [int((c >= np.asarray(r["best_single_hindsight"]) - 1e-12).sum())
                                                for c, r in zip(curves[:, j], runs)]}
            for j, (t, m) in enumerate(zip(runs[0]["rounds"], mean))] + [
        {"round": None, "label": "best single, hindsight", "sweep_mean": float(hind.mean()), "reward_wq1": float(hind[-1])},
        {"round": None, "label": "best single chosen on train", "sweep_mean": float(train.mean()), "reward_wq1": float(train[-1])}]


def table(rows: list[dict]) -> str:
    out = ["| feedback rounds | sweep mean (11 w_q) | w_q = 1 | >= best single on these tasks (hindsight), of 11: mean curve; per seed "
           "| >= best single chosen on train |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["round"] is None:
            out.append(f"| {r['label']} | {r['sweep_mean']:.4f} | {r['reward_wq1']:.4f} | | |")
        else:
            out.append(f"| {r['round']} | {r['sweep_mean']:.4f} | {r['reward_wq1']:.4f} | {r['at_or_above_hindsight_single']}; "
                       f"{' '.join(map(str, r['per_seed_at_or_above_hindsight']))} | {r['at_or_above_train_single']} |")
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    curves = np.asarray([r["curve"] for r in runs])
    hind = np.mean([r["best_single_hindsight"] for r in runs], axis=0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = runs[0]["rounds"]
    gap = (curves - hind).mean(2)  # [seeds, points]: sweep mean minus the hindsight single's
    left.plot(x, gap.mean(0), "o-", ms=3, label=f"mean of {len(runs)} seeds")
    left.fill_between(x, gap.min(0), gap.max(0), alpha=0.2, label="range over seeds")
    left.axhline(0, color="black", ls=":", label="best single model on these tasks (hindsight)")
    left.set_xlabel("feedback rounds")
    left.set_ylabel("greedy reward minus the best single's, sweep mean")
    left.legend(fontsize=7)
    for j, style in ((0, "--"), (-1, "-")):
        right.plot(SWEEP, curves[:, j].mean(0), style, marker="o", ms=3, label=f"BaRP after {x[j]} rounds")
    right.plot(SWEEP, hind, "k:", label="best single (hindsight)")
    right.plot(SWEEP, np.mean([r["best_single_on_train"] for r in runs], axis=0), color="grey", alpha=0.6,
               label="best single chosen on train")
    right.set_xlabel("w_q")
    right.set_ylabel("reward on the evaluation half")
    right.legend(fontsize=7)
    fig.suptitle(f"live feedback on unseen tasks ({result['label']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a validation config whose held-out prompts are unseen tasks")
    p.add_argument("--checkpoints", required=True, nargs="+",
                   help="globs: checkpoints trained on that config's train split, one per seed; a folder named "
                        "seed-N streams and splits as seed N, so seeds 6-11 are the same runs as in a 0-11 sweep")
    p.add_argument("--rounds", type=int, default=4000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--cadence", type=int, default=16, help="rewards between two trainer updates (16: an idle machine)")
    p.add_argument("--keep", type=float, default=0.5, help="decision shrinkage served (the OOD config's 0.5; 1: off)")
    p.add_argument("--cost-multiplier", type=float, default=3.0,
                   help="decision cost multiplier served (the OOD config's 3 since session 49; 1: off)")
    p.add_argument("--set", action="append", default=[], help="serve app args override, e.g. trainer.lr=0.002")
    p.add_argument("--task", help="stream and score only this task's held-out prompts")
    p.add_argument("--label", default="shipped")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "live_unseen_tasks"))
    p.add_argument("--render", metavar="JSON", help="redraw the table and figure of a saved run, run nothing")
    args = p.parse_args()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        plot(result, Path(args.render).with_suffix(".png"))
        print(table(result["summary"]))
        return
    if not 0.0 <= args.keep <= 1.0:
        sys.exit(f"error: --keep: a decision shrinkage in [0, 1], got {args.keep}")
    if not 0.0 < args.cost_multiplier <= 1000.0:
        sys.exit(f"error: --cost-multiplier: a number in (0, 1000], got {args.cost_multiplier}")
    from barp_ray.config import load_config
    from barp_ray.data.prepare import prepare
    from barp_ray.data.table import DataError

    ckpts = sorted({c for pattern in args.checkpoints for c in glob.glob(pattern)}, key=lambda c: (seed_of(c, -1), c))
    if not ckpts:
        sys.exit(f"error: --checkpoints: no directory matches {' '.join(args.checkpoints)!r}")
    data = prepare(load_config(args.config), progress=False)
    if args.task is not None:
        try:
            keep = data.test.task_rows(args.task)
        except DataError as e:
            sys.exit(f"error: --task: {e}")
        if len(keep) < 2:
            sys.exit(f"error: --task: {args.task!r} has {len(keep)} held-out prompt; streaming and scoring need two halves")
        data = dataclasses.replace(data, test=data.test.subset(keep), test_embeddings=data.test_embeddings[keep])
    runs = []
    for index, ckpt in enumerate(ckpts):
        seed = seed_of(ckpt, index)
        r = one_run(ckpt, data, seed, args.rounds, args.eval_every, args.cadence, args.keep, args.set, args.cost_multiplier)
        runs.append(r)
        hind = np.asarray(r["best_single_hindsight"])
        print(f"seed {seed}: sweep minus hindsight single " + " ".join(f"{(np.asarray(c) - hind).mean():+.4f}" for c in r["curve"])
              + f"  [{r['seconds']:.0f}s, {r['refused']}/{r['updates']} refused, {r['forgets']} forgets"
              + (f", anchor ended at {r['anchor_ended']['round']} ({r['anchor_ended']['why']})" if r["anchor_ended"] else "")
              + "]", flush=True)
    summary = summarize(runs)
    result = {"label": args.label, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "render")},
              "summary": summary, "runs": runs, "command": " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.label}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{args.label}.png")
    print(table(summary))
    print(f"wrote {out / args.label}.json/.png")


if __name__ == "__main__":
    main()
