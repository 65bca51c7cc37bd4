"""A decision rule on the six validation draws: keep the policy's own choice only if its log-probability
beats that of the average training prompt's choice by at least theta, else take the latter. Checkpoints
only (runs/ablation/<name>/seed-s, each scored on seed s's own draw). A measurement (session 37).

    python docs/results/preference_range_val/margin_abstention.py vs_shipped   # ~1 min
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from paired_sweep import draws  # noqa: E402  (this folder)

from barp_ray.scoring import score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402

THRESHOLDS = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0]

name = sys.argv[1]
res: dict[float, list] = {t: [] for t in THRESHOLDS}
for _, data, modules in draws([name]):
    m = modules[name]
    m.set_decision_shrinkage(1.0)
    x = torch.from_numpy(np.ascontiguousarray(data.test_embeddings))
    average = torch.as_tensor(data.train_embeddings.mean(0), dtype=torch.float32)[None]
    rows: dict[float, list] = {t: [] for t in THRESHOLDS}
    for w in SWEEP:
        pref = torch.tensor(w, dtype=torch.float32)
        with torch.no_grad():
            logp = torch.log(m.action_probabilities(x, pref.expand(len(x), 2)).clamp_min(1e-30))
            a0 = m.action_probabilities(average, pref[None]).argmax(-1).expand(len(x))
        a = logp.argmax(-1)
        margin = logp.gather(1, a[:, None])[:, 0] - logp.gather(1, a0[:, None])[:, 0]  # >= 0: a is the argmax
        for t in THRESHOLDS:
            rows[t].append(score_actions(data.test, torch.where(margin >= t, a, a0).numpy(), w, data.tau).reward)
    for t in THRESHOLDS:
        res[t].append(rows[t])
own = np.asarray(res[0.0])
for t in THRESHOLDS:
    r = np.asarray(res[t])
    d = r.mean(1) - own.mean(1)
    print(f"theta {t:4}: sweep {r.mean():.4f} diff {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}  per w:",
          " ".join(f"{v:+.4f}" for v in r.mean(0)))
out = Path(__file__).with_name(f"margin_abstention_{name}_6draws.json")
out.write_text(json.dumps({"checkpoints": name, "thresholds": THRESHOLDS, "per_seed_reward": {str(t): res[t] for t in THRESHOLDS}}, indent=1))
print(f"wrote {out}")
