"""Where BaRP trails kNN at w_q 0.3-0.5 on the task-balanced validation split, per held-out task (session 33).

kNN is fitted as `barp eval` fits it (90/10 fit/validation partition of the train prompts, seed 0, k
chosen on that partition); BaRP is each checkpoint's own argmax (decision shrinkage off).

    python docs/results/preference_range_val/mid_range_by_task.py configs/llmrouter_val_balanced.yaml 'runs/ablation/dshrink_gated0.6/seed-*'
"""
import glob
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from barp_ray.config import load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402
from barp_ray.evaluation.baselines.full_info import KNNRouter, TrainView  # noqa: E402
from barp_ray.policy import RoutingPolicy  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402
from envs.reward import reward  # noqa: E402

d = prepare(load_config(sys.argv[1]))
te = d.test
knn = KNNRouter().fit(TrainView.build(d.train_embeddings, d.train.scores, d.train.costs, d.tau, 0.1, 0), SWEEP)
policies = [RoutingPolicy.load(c).module for c in sorted(glob.glob(sys.argv[2]))]
for m in policies:
    m.set_decision_shrinkage(1.0)
x = torch.from_numpy(np.ascontiguousarray(d.test_embeddings, dtype=np.float32))
rows = np.arange(te.n)
print(f"{knn.name}, {len(policies)} checkpoints")
for wq in (0.3, 0.4, 0.5):
    w = (wq, 1 - wq)
    r = reward(te.scores, te.costs, w[0], w[1], d.tau)
    k_act = knn.choose(d.test_embeddings, w).argmax(1)
    with torch.no_grad():
        b_act = [m.action_probabilities(x, torch.tensor(w, dtype=torch.float32).expand(len(x), 2)).argmax(-1).numpy()
                 for m in policies]
    print(f"\nw_q {wq}: kNN {r[rows, k_act].mean():+.4f}  BaRP {np.mean([r[rows, a].mean() for a in b_act]):+.4f}")
    for task in np.unique(te.tasks):
        t = te.tasks == task
        rt = r[t]
        mean = rt.mean(0)
        barp = np.mean([rt[np.arange(t.sum()), a[t]].mean() for a in b_act])
        print(f"  {task:22s} kNN {rt[np.arange(t.sum()), k_act[t]].mean():+.4f}  BaRP {barp:+.4f}  "
              f"best single {te.models[mean.argmax()]} {mean.max():+.4f}")
