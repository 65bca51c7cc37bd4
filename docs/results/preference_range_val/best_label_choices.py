"""What the best-label classifier routes to on the task-held-out folds, and why. A diagnosis.

Why: it is the strongest full-information router on validation out of distribution (session 34) and the
one BaRP trails at w_q 0.5-0.7 on the OOD test. With 0/1 task scores the model that earns the most reward
on a prompt is the cheapest one that answers it, or the cheapest of all when none does; so the cheapest
model is the label on most training prompts at every w_q < 1, and a classifier of that label routes nearly
everything to it. This prints, per fold and w_q, each model's training win share, the classifier's and one
BaRP checkpoint's (`oS_fold<n>/seed-0`, k = 0.5) choice counts, and their reward on the held-out prompts.

    python docs/results/preference_range_val/best_label_choices.py   # ~1 min
"""
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
from barp_ray.evaluation.baselines.full_info import BestLabelRouter, TrainView  # noqa: E402
from barp_ray.policy import RoutingPolicy  # noqa: E402
from barp_ray.scoring import reward_matrix  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ood_folds import FOLDS  # noqa: E402  (this folder)


def main() -> None:
    for fold, config in FOLDS.items():
        data = prepare(apply_overrides(load_config(ROOT / config), ["data.seed=0"]), progress=False)
        view = TrainView.build(data.train_embeddings, data.train.scores, data.train.costs, data.tau, 0.1, 0)
        policy = RoutingPolicy.load(str(ROOT / "runs" / "ablation" / f"oS_fold{fold}" / "seed-0")).module
        x = torch.from_numpy(np.ascontiguousarray(data.test_embeddings))
        cheapest = int(np.argmin(data.train.costs.mean(0)))
        print(f"fold {fold} ({config}): {len(x)} held-out prompts; the cheapest model is #{cheapest}")
        for wq in (0.5, 0.6, 0.7, 0.8, 0.9):
            w = (wq, round(1 - wq, 1))
            held, train = reward_matrix(data.test, w, data.tau), reward_matrix(data.train, w, data.tau)
            wins = (train >= train.max(1, keepdims=True) - 1e-9).mean(0)
            label = BestLabelRouter().fit(view, [w], seed=0).choose(data.test_embeddings, w).argmax(1)
            with torch.no_grad():
                barp = policy.action_probabilities(x, torch.tensor(w, dtype=torch.float32).expand(len(x), 2)).argmax(-1).numpy()
            rows = np.arange(len(held))
            print(f"  w_q {wq}: train win share {np.round(wins, 2).tolist()}")
            print(f"    best-label picks {np.bincount(label, minlength=held.shape[1]).tolist()} -> {held[rows, label].mean():.4f}; "
                  f"BaRP {np.bincount(barp, minlength=held.shape[1]).tolist()} -> {held[rows, barp].mean():.4f}; "
                  f"each model alone {np.round(held.mean(0), 3).tolist()}")


if __name__ == "__main__":
    main()
