"""A decision-time cost multiplier on the six validation draws: route by the cost-aware head's logits
with its cost term scaled by m, logits - (m - 1) w_c s c_bar, instead of m = 1. Session 31 found the
policy routes at w_q 0.4 and 0.8 as if asked at a more quality-leaning preference
(`preference_calibration_balanced_6seeds.json`); one global m is the one-number version of that
remap. Checkpoints only (runs/ablation/<name>/seed-s on seed s's own draw). A measurement (session 39).

    python docs/results/preference_range_val/decision_cost_multiplier.py vs_shipped   # ~1 min
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402

from paired_sweep import draws  # noqa: E402  (this folder)

from barp_ray.evaluation.baselines.full_info import KNNRouter, TrainView  # noqa: E402
from barp_ray.scoring import score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402

MULTIPLIERS = [0.7, 0.85, 1.0, 1.1, 1.2, 1.35, 1.5]

name = sys.argv[1]
res: dict[float, list] = {m: [] for m in MULTIPLIERS}
knn = []
for seed, data, modules in draws([name]):
    module = modules[name]
    module.set_decision_shrinkage(1.0)
    x = torch.from_numpy(np.ascontiguousarray(data.test_embeddings))
    cost_term = (torch.nn.functional.softplus(module.price_scale) * module._known_cost({})).detach()
    rows: dict[float, list] = {m: [] for m in MULTIPLIERS}
    for w in SWEEP:
        obs = {"embedding": x, "preference": torch.tensor(w, dtype=torch.float32).expand(len(x), 2)}
        with torch.no_grad():
            logits = module._forward({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        for m in MULTIPLIERS:
            rows[m].append(score_actions(data.test, (logits - (m - 1) * w[1] * cost_term).argmax(-1).numpy(), w, data.tau).reward)
    for m in MULTIPLIERS:
        res[m].append(rows[m])
    view = TrainView.build(data.train_embeddings, data.train.scores, data.train.costs, data.tau, 0.1, seed)
    router = KNNRouter().fit(view, SWEEP)
    knn.append([score_actions(data.test, router.choose(data.test_embeddings, w).argmax(1), w, data.tau).reward for w in SWEEP])
knn_mean, own = np.asarray(knn).mean(0), np.asarray(res[1.0])
for m in MULTIPLIERS:
    r = np.asarray(res[m])
    d = r.mean(1) - own.mean(1)
    print(f"m {m:4}: sweep {r.mean():.4f}, minus m = 1 {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}, "
          f">= kNN at {(r.mean(0) >= knn_mean).sum()}/11; minus kNN per w_q:", " ".join(f"{v:+.4f}" for v in r.mean(0) - knn_mean))
out = Path(__file__).with_name(f"decision_cost_multiplier_{name}_6draws.json")
out.write_text(json.dumps({"checkpoints": name, "multipliers": MULTIPLIERS, "knn_per_draw": knn,
                           "per_seed_reward": {str(m): res[m] for m in MULTIPLIERS}}, indent=1))
print(f"wrote {out}")
