"""Is a trained policy's preference input calibrated? Reward at a true preference w_q when the
policy is asked at a nearby w_q' instead (issue 10's diagnosis of the gap at w_q 0.4).

A policy that reads w as the trade-off it is scored on does best at w_q' = w_q; a peak elsewhere
says it acts as if quality weighed more (peak below w_q) or less (above) than it does there.
Greedy routing of the held-out prompts of a validation config; mean over the given checkpoints.

    python bench/preference_calibration.py --config configs/llmrouter_val_balanced.yaml \
        --checkpoints 'runs/ablation/shipped85/seed-*' --w-q 0.3 0.4 0.5 0.6 \
        --out docs/results/preference_range_val/preference_calibration_balanced_6seeds.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from barp_ray.config import load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402
from barp_ray.evaluation.experiment import PolicyRouter  # noqa: E402
from barp_ray.evaluation.metrics import prompt_rewards  # noqa: E402
from barp_ray.policy import RoutingPolicy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a validation config (its held-out prompts are scored)")
    ap.add_argument("--checkpoints", required=True, help="glob of checkpoint directories (one per seed)")
    ap.add_argument("--w-q", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--span", type=float, default=0.1, help="ask the policy at w_q - span .. w_q + span")
    ap.add_argument("--step", type=float, default=0.025)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    data = prepare(load_config(args.config))
    test = data.test
    routers = [PolicyRouter(RoutingPolicy.load(p)) for p in sorted(glob.glob(args.checkpoints))]
    if not routers:
        sys.exit(f"--checkpoints: nothing matches {args.checkpoints!r}")
    offsets = np.round(np.arange(-args.span, args.span + 1e-9, args.step), 6)
    rows = {}
    for true in args.w_q:
        asked = np.clip(np.round(true + offsets, 6), 0.0, 1.0)
        reward = np.zeros((len(routers), len(asked)))
        for i, router in enumerate(routers):
            for j, wq in enumerate(asked):
                choice = router.choose(data.test_embeddings, (wq, 1 - wq))  # greedy, as `barp eval` routes
                reward[i, j] = prompt_rewards(test.scores, test.costs, choice, (true, 1 - true), data.tau).mean()
        mean = reward.mean(0)
        at_true = float(mean[np.argmin(np.abs(asked - true))])
        rows[str(true)] = {"asked_at": asked.tolist(), "reward": mean.tolist(), "reward_at_true": at_true,
                           "best_asked_at": float(asked[mean.argmax()]), "best_gain": float(mean.max() - at_true)}
        print(f"w_q {true:g}: reward {at_true:.4f} asked at {true:g}; best asked at {asked[mean.argmax()]:g} "
              f"({mean.max() - at_true:+.4f}); by w_q': " + " ".join(f"{a:g}:{m - at_true:+.4f}" for a, m in zip(asked, mean)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": args.config, "checkpoints": args.checkpoints, "seeds": len(routers),
                                        "rows": rows, "command": " ".join(sys.argv)}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
