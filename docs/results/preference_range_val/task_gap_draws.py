"""Which tasks carry BaRP's gap to kNN, per preference, over several validation draws (session 45).

Session 33's `mid_range_by_task.py` reads one draw; a per-task gap of 25 prompts needs many. Here
checkpoint seed-s of a `screen_variants.py` / `--vary-split` run is scored on its own draw s (its
argmax, as `barp eval` scores it) against kNN fitted as the ablation fits it (seed s), and each task's
share of the difference is given per 1,000 validation prompts, so a column adds up to the gap of the
mean. Nothing is trained; the test file is never read.

    python docs/results/preference_range_val/task_gap_draws.py runs/ablation/pown3 --draws 12 [--out X.json]
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from barp_ray.config import apply_overrides, load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402
from barp_ray.evaluation.baselines.full_info import KNNRouter, TrainView  # noqa: E402
from barp_ray.evaluation.config import EvalConfig  # noqa: E402
from barp_ray.evaluation.experiment import default_preference, preference_grid  # noqa: E402
from barp_ray.scoring import reward_matrix  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402
from bench.per_task_difference import per_task_shares, sweep_rewards  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", help="a variant's run folder (seed-0, seed-1, ...)")
    p.add_argument("--config", default=str(ROOT / "configs" / "llmrouter_val_balanced.yaml"))
    p.add_argument("--draws", type=int, default=12)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    base, eval_cfg = load_config(args.config), EvalConfig()
    grid = preference_grid(11, default_preference(base, eval_cfg))
    gaps: dict[str, np.ndarray] = {}  # task -> [draws, sweep] BaRP minus kNN, per 1,000 prompts of the draw
    for s in range(args.draws):
        data = prepare(apply_overrides(base, [f"data.seed={s}"]))
        view = TrainView.build(data.train_embeddings, data.train.scores, data.train.costs, data.tau, eval_cfg.validation_fraction, s)
        knn = KNNRouter(eval_cfg.knn_k).fit(view, grid)
        rows = np.arange(data.test.n)
        knn_rewards = np.stack([reward_matrix(data.test, w, data.tau)[rows, knn.choose(data.test_embeddings, w).argmax(1)] for w in SWEEP])
        diff = sweep_rewards(str(Path(args.runs) / f"seed-{s}"), data) - knn_rewards  # [preferences, prompts]
        for t, share in per_task_shares(diff, np.asarray(data.test.tasks), data.test.task_names()).items():
            gaps.setdefault(t, np.zeros((args.draws, len(SWEEP))))[s] = share
    total = sum(gaps.values())
    print(f"BaRP ({args.runs}) minus kNN per 1,000 validation prompts, mean of {args.draws} draws; columns w_q")
    print("| task | " + " | ".join(f"{w[0]:.1f}" for w in SWEEP) + " |\n|" + " --- |" * (len(SWEEP) + 1))
    for t, g in sorted(gaps.items()):
        print(f"| {t} | " + " | ".join(f"{x:+.1f}" for x in g.mean(0)) + " |")
    print("| **all** | " + " | ".join(f"**{x:+.1f}**" for x in total.mean(0)) + " |")
    print("| se of all | " + " | ".join(f"{x:.1f}" for x in total.std(0, ddof=1) / np.sqrt(args.draws)) + " |")
    if args.out:
        args.out.write_text(json.dumps({"runs": args.runs, "config": args.config, "draws": args.draws, "w_q": [w[0] for w in SWEEP],
                                        "per_task_per_1000": {t: g.tolist() for t, g in gaps.items()}}, indent=1))
        print("wrote", args.out)


if __name__ == "__main__":
    main()
