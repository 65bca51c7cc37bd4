"""Neighbour vote: a decision rule measured in session 34, not shipped.

Each held-out prompt is routed by the mean of the policy's log-probabilities over its k nearest train
prompts (cosine similarity of h(x)), mixed with its own at weight `own`. This is kNN's smoothing applied
to what the policy learned per train prompt from bandit feedback; no outcome of any model is read.

    python docs/results/preference_range_val/neighbour_vote.py CONFIG 'CHECKPOINT_GLOB' DECISION_SHRINKAGE OUT.json
"""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from barp_ray.config import load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402
from barp_ray.policy import RoutingPolicy  # noqa: E402
from barp_ray.scoring import score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402

NEIGHBOURS = (5, 10, 20, 50)
OWN = (0.0, 0.25, 0.5, 0.75)


def log_probs(module, x: np.ndarray, w: tuple[float, float]) -> np.ndarray:
    pref = torch.tensor(w, dtype=torch.float32).expand(len(x), 2)
    with torch.no_grad():
        return torch.log(module.action_probabilities(torch.from_numpy(x), pref).clamp_min(1e-30)).numpy()


def main() -> int:
    config, pattern, shrinkage, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    data = prepare(load_config(config), progress=False)
    checkpoints = sorted(glob.glob(pattern))
    policies = [RoutingPolicy.load(c).module for c in checkpoints]
    for m in policies:
        m.set_decision_shrinkage(shrinkage)
    held_out = np.ascontiguousarray(data.test_embeddings, dtype=np.float32)
    train = np.ascontiguousarray(data.train_embeddings, dtype=np.float32)
    nearest = np.argsort(-(held_out @ train.T), axis=1)[:, :max(NEIGHBOURS)]
    rows: dict[str, list[float]] = {"policy": [], **{f"k{k} own{o:g}": [] for k in NEIGHBOURS for o in OWN}}
    for w in SWEEP:
        per_seed: dict[str, list[float]] = {name: [] for name in rows}
        for m in policies:
            own, on_train = log_probs(m, held_out, w), log_probs(m, train, w)
            score = lambda scores: score_actions(data.test, scores.argmax(-1), w, data.tau).reward  # noqa: E731
            per_seed["policy"].append(score(own))
            for k in NEIGHBOURS:
                vote = on_train[nearest[:, :k]].mean(1)
                for o in OWN:
                    per_seed[f"k{k} own{o:g}"].append(score(o * own + (1 - o) * vote))
        for name in rows:
            rows[name].append(float(np.mean(per_seed[name])))
    print("| rule | " + " | ".join(f"w_q={w[0]:g}" for w in SWEEP) + " | sweep mean |")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:+.4f}" for v in r) + f" | {np.mean(r):.4f} |")
    Path(out).write_text(json.dumps({"command": " ".join(sys.argv), "checkpoints": checkpoints, "reward": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
