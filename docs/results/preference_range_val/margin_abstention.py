"""A decision rule on the six validation draws: keep the policy's own choice only if its log-probability
beats that of the average training prompt's choice by at least theta, else take the latter. Checkpoints
only (runs/ablation/<name>/seed-s, each scored on seed s's own draw). A measurement (session 37).

    python docs/results/preference_range_val/margin_abstention.py vs_shipped   # ~1 min
"""
import json, sys, os, numpy as np
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0"); ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]; sys.path.insert(0, str(ROOT))
import torch
from barp_ray.config import apply_overrides, load_config
from barp_ray.data.prepare import prepare
from barp_ray.policy import RoutingPolicy
from barp_ray.scoring import score_actions
from barp_ray.training.early_stopping import SWEEP
name = sys.argv[1]
base = load_config(ROOT / "configs" / "llmrouter_val_balanced.yaml")
TH = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0]
res = {t: [] for t in TH}
for s in range(6):
    data = prepare(apply_overrides(base, [f"data.seed={s}"]), progress=False)
    x = torch.from_numpy(np.ascontiguousarray(data.test_embeddings))
    m = RoutingPolicy.load(str(ROOT / "runs" / "ablation" / name / f"seed-{s}")).module
    m.set_decision_shrinkage(1.0)
    ref = torch.as_tensor(data.train_embeddings.mean(0), dtype=torch.float32)[None].expand(len(x), -1)
    rows = {t: [] for t in TH}
    for w in SWEEP:
        pref = torch.tensor(w, dtype=torch.float32).expand(len(x), 2)
        with torch.no_grad():
            lp = torch.log(m.action_probabilities(x, pref).clamp_min(1e-30))
            a0 = m.action_probabilities(ref, pref).argmax(-1)
        a = lp.argmax(-1)
        margin = lp.gather(1, a[:, None])[:, 0] - lp.gather(1, a0[:, None])[:, 0]
        for t in TH:
            act = torch.where(margin >= t, a, a0) if t > 0 else a
            rows[t].append(score_actions(data.test, act.numpy(), w, data.tau).reward)
    for t in TH: res[t].append(rows[t])
base0 = np.array(res[0.0])
for t in TH:
    r = np.array(res[t]); d = r.mean(1) - base0.mean(1)
    print(f"theta {t:4}: sweep {r.mean():.4f} diff {d.mean():+.4f} ± {d.std(ddof=1)/np.sqrt(6):.4f}  per w:", " ".join(f"{v:+.4f}" for v in r.mean(0)))
out = __import__("pathlib").Path(__file__).with_name(f"margin_abstention_{name}_6draws.json")
out.write_text(json.dumps({"checkpoints": name, "thresholds": TH, "per_seed_reward": {str(t): res[t] for t in TH}}, indent=1))
print(f"wrote {out}")
