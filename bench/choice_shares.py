"""Which models BaRP, kNN, the score MLP and the oracle pick at a few preferences, on validation.

    python bench/preference_ablation.py --config configs/llmrouter_val_balanced.yaml --seeds 6 --variant "shipped=..."
    python bench/choice_shares.py --config configs/llmrouter_val_balanced.yaml --runs runs/ablation/shipped --seeds 6 \
        --w-q 0.3 0.4 0.5 0.8 1.0 --out docs/results/preference_range_val/choice_shares_balanced_6seeds.json

The ablation says where BaRP trails a full-information router (a reward per preference); this says
why, by which models each router buys there. It reads the checkpoints the ablation left under
`--runs` (seed-0, seed-1, ...), fits kNN and the score MLP per seed as the ablation does, and scores
all of them on the config's validation split (its test file is never read by a validation config).
`--vary-split` scores seed s's checkpoint on its own draw s (`data.seed` = s), as the ablation's `--vary-split`
and `screen_variants.py` trained it. `--task` scores one task's prompts only. With a test config (`configs/llmrouter.yaml`) it reads the
test file: a diagnosis after the fact (docs/results/task_shift), never a way to choose a setting.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ROUTERS = ("kNN", "score MLP")


def run(args) -> dict:
    from barp_ray.config import apply_overrides, load_config
    from barp_ray.data.prepare import prepare
    from barp_ray.data.table import DataError
    from barp_ray.evaluation.baselines.reference import Oracle
    from barp_ray.evaluation.config import EvalConfig
    from barp_ray.evaluation.experiment import PolicyRouter, default_preference, fit_offline, preference_grid
    from barp_ray.evaluation.metrics import prompt_rewards
    from barp_ray.policy import RoutingPolicy
    from envs.reward import normalized_cost

    base = load_config(args.config)
    eval_cfg = EvalConfig()
    grid = preference_grid(11, default_preference(base, eval_cfg))
    prefs = [(round(q, 6), round(1.0 - q, 6)) for q in args.w_q]
    shares: dict[str, dict[str, list]] = {}
    data, described = None, []  # each split's mean score and cost per model
    for seed in range(args.seeds):
        ckpt = Path(args.runs) / f"seed-{seed}"
        if not ckpt.exists():
            raise SystemExit(f"--runs: no checkpoint {ckpt}; run bench/preference_ablation.py first")
        if data is None or args.vary_split:  # with --vary-split, seed s was trained and is scored on draw s
            data = prepare(apply_overrides(base, [f"data.seed={seed}"]) if args.vary_split else base)
            val, emb, tau = data.test, data.test_embeddings, data.tau
            if args.task is not None:
                try:
                    keep = val.task_rows(args.task)
                except DataError as e:
                    raise SystemExit(f"--task: {e}") from None
                val, emb = val.subset(keep), emb[keep]
            oracle = Oracle(val.scores, val.costs, tau)
            described.append((val.scores.mean(0), normalized_cost(val.costs, tau).mean(0)))
        routers = [oracle, PolicyRouter(RoutingPolicy.load(str(ckpt)))]
        routers += [r for r in fit_offline(data, eval_cfg, grid, seed, progress=False) if r.name in ROUTERS]
        for w in prefs:
            for r in routers:
                choice = r.choose(emb, w)
                e = shares.setdefault(r.name, {}).setdefault(f"{w[0]:g}", [])
                e.append({"share": choice.mean(0).tolist(),
                          "reward": float(prompt_rewards(val.scores, val.costs, choice, w, tau).mean())})
    out = {"config": args.config, "runs": args.runs, "seeds": args.seeds, "vary_split": args.vary_split, "task": args.task, "models": list(val.models),
           "mean_score": np.mean([d[0] for d in described], 0).tolist(), "mean_normalised_cost": np.mean([d[1] for d in described], 0).tolist(), "routers": {}}
    for name, by_w in shares.items():
        out["routers"][name] = {wq: {"share": np.mean([r["share"] for r in rs], 0).tolist(),
                                     "reward": float(np.mean([r["reward"] for r in rs]))} for wq, rs in by_w.items()}
    return out


def table(res: dict) -> str:
    models = res["models"]
    head = ["w_q", "router", "reward", *models]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head),
             "| | mean score | | " + " | ".join(f"{x:.3f}" for x in res["mean_score"]) + " |",
             "| | mean min(c/τ, 1) | | " + " | ".join(f"{x:.3f}" for x in res["mean_normalised_cost"]) + " |"]
    wqs = list(next(iter(res["routers"].values())))
    for wq in wqs:
        for name, by_w in res["routers"].items():
            e = by_w[wq]
            lines.append(f"| {wq} | {name} | {e['reward']:+.4f} | " + " | ".join(f"{s:.2f}" for s in e["share"]) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a validation config (its test file is the validation split)")
    p.add_argument("--runs", required=True, help="the ablation's run folder for one variant (holds seed-N checkpoints)")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--w-q", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.8])
    p.add_argument("--vary-split", action="store_true", help="seed s is scored on its own validation draw (data.seed = s), as the ablation's --vary-split trained it")
    p.add_argument("--task", help="score only this task's prompts of the split")
    p.add_argument("--out", help="JSON path")
    args = p.parse_args()
    if args.seeds < 1:
        p.error(f"--seeds: need at least 1, got {args.seeds}")
    if any(not 0.0 <= q <= 1.0 for q in args.w_q):
        p.error(f"--w-q: each must be in [0, 1], got {args.w_q}")
    res = run(args)
    print(table(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
