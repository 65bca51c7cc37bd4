"""The critic's quality estimate against the truth, per task and model, on the prompts it trained on (session 45).

Why: at w_q 0.2-0.4 BaRP keeps the cheapest model (gemma-2-9b) on human_eval, where it scores 0.10 and
qwen2.5-7b 0.69 (`task_gap_draws.py`), although the critic-form policy is pulled toward softmax(Q / 0.1).
This prints what Q's quality part believes there: the clean critic (members' mean for an ensemble)
on draw s's own training prompts, in-sample, against their true mean scores. Nothing is trained.

    python docs/results/preference_range_val/critic_by_task.py runs/ablation/ref --draw 0
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from barp_ray.config import apply_overrides, load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402
from barp_ray.policy import RoutingPolicy  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", help="a variant's run folder (seed-0, seed-1, ...), reward- or known-cost-form critic")
    p.add_argument("--config", default=str(ROOT / "configs" / "llmrouter_val_balanced.yaml"))
    p.add_argument("--draw", type=int, default=0)
    args = p.parse_args()
    data = prepare(apply_overrides(load_config(args.config), [f"data.seed={args.draw}"]))
    module = RoutingPolicy.load(str(Path(args.runs) / f"seed-{args.draw}")).module
    module.eval()
    members = module.members if module.members is not None else [module]
    if any(m.baseline_head is None or m.critic_form not in ("reward", "known_cost") for m in members):
        raise SystemExit(f"{args.runs}: needs a reward- or known-cost-form critic")
    k, x = data.train.k, torch.as_tensor(data.train_embeddings, dtype=torch.float32)
    with torch.no_grad():  # both forms put the K qualities first
        quality = np.mean([m.baseline_head(x)[:, :k].numpy() for m in members], 0)
    tasks = np.asarray(data.train.tasks)
    print(f"true / critic mean quality on draw {args.draw}'s training prompts ({args.runs})")
    print("| task | n | " + " | ".join(data.train.models) + " |\n|" + " --- |" * (k + 2))
    for t in data.train.task_names():
        rows = tasks == t
        print(f"| {t} | {rows.sum()} | " + " | ".join(f"{data.train.scores[rows, j].mean():.2f} / {quality[rows, j].mean():.2f}" for j in range(k)) + " |")
    err = quality - data.train.scores
    print(f"mean error {err.mean():+.3f}; slope of critic on truth per (task, model) cell:",
          f"{np.polyfit(*np.array([[data.train.scores[tasks == t, j].mean(), quality[tasks == t, j].mean()] for t in data.train.task_names() for j in range(k)]).T, 1)[0]:.2f}")


if __name__ == "__main__":
    main()
