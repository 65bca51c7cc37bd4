"""Where does one trained setting beat another? Their reward difference per task and preference.

Why: a sweep mean or a count of preferences says whether a setting won, not where. Two sets of
checkpoints (one per seed each, paired in order) are scored on the config's test split at every
point of the 11-point sweep; the table gives each task's share of the difference of the mean
(per 1,000 prompts, so the rows add up to the difference of the mean), averaged over the seed pairs.
Scoring only: nothing is trained. On a test file this is a diagnosis after the fact, never a way to
choose a setting.

    python bench/per_task_difference.py --config configs/llmrouter.yaml \
        --a 'checkpoints/eval/llmrouter_id/seed-*' --b 'runs/single_id/seed-*' --out docs/results/X.json
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

from barp_ray.training.early_stopping import SWEEP  # noqa: E402


def sweep_rewards(checkpoint: str, data) -> np.ndarray:
    """[preferences, prompts] the checkpoint's greedy reward on every test prompt at every sweep point."""
    from barp_ray.policy import RoutingPolicy
    from barp_ray.scoring import greedy_actions, reward_matrix

    module, rows = RoutingPolicy.load(checkpoint).module, np.arange(data.test.n)
    return np.stack([reward_matrix(data.test, w, data.tau)[rows, greedy_actions(module, data.test_embeddings, w)] for w in SWEEP])


def per_task_shares(diff: np.ndarray, tasks: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Each task's share of a [preferences, prompts] difference's mean, per 1,000 prompts, so the
    tasks' rows add up to the difference of the mean."""
    return {t: diff[:, tasks == t].sum(1) / diff.shape[1] * 1000 for t in names}


def main() -> int:
    from barp_ray.config import ConfigError, apply_overrides, load_config
    from barp_ray.data.prepare import prepare

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/llmrouter.yaml")
    p.add_argument("--set", action="append", default=[], help="a config override the checkpoints were trained under, e.g. env.tau=0.0005")
    p.add_argument("--a", required=True, help="glob of setting A's checkpoints, one per seed")
    p.add_argument("--b", required=True, help="glob of setting B's checkpoints, paired with A's in sorted order")
    p.add_argument("--out", type=Path, help="write the table as JSON here")
    args = p.parse_args()
    a, b = sorted(glob.glob(args.a)), sorted(glob.glob(args.b))
    if not a or len(a) != len(b):
        print(f"error: --a matches {len(a)} checkpoints and --b {len(b)}; they must pair up (and be at least one)", file=sys.stderr)
        return 2
    try:
        cfg = apply_overrides(load_config(args.config), args.set)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = prepare(cfg, progress=False)
    diff = np.mean([sweep_rewards(x, data) - sweep_rewards(y, data) for x, y in zip(a, b)], axis=0)  # [prefs, prompts]
    per_task = {t: v.tolist() for t, v in per_task_shares(diff, np.asarray(data.test.tasks), data.test.task_names()).items()}
    w_q = [round(w[0], 2) for w in SWEEP]
    print(f"A minus B, per 1,000 test prompts ({len(a)} seed pairs); rows add up to the difference of the mean")
    print("| task | " + " | ".join(f"{w:g}" for w in w_q) + " | sweep |")
    print("| --- " * (len(w_q) + 2) + "|")
    for t, row in [*per_task.items(), ("all", (diff.mean(1) * 1000).tolist())]:
        print(f"| {t} | " + " | ".join(f"{x:+.1f}" for x in row) + f" | {np.mean(row):+.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": args.config, "set": args.set, "a": a, "b": b, "w_q": w_q,
                                        "per_task_per_1000": per_task, "all_per_1000": (diff.mean(1) * 1000).tolist()}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
