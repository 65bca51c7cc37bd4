"""Decision shrinkage toward the policy's decision at the *traffic's* mean prompt instead of the training
mean: the mean of each held-out prompt's m nearest held-out prompts (m = all: the whole traffic's
mean), at keep k. The held-out prompts' embeddings only, never an outcome: what a live service knows
of its traffic. A measurement on the three task-held-out validation folds (session 37). The shipped
training-mean reference on the same checkpoints is `bench/decision_rules.py --shrinkage`
(`decision_rules_ood_fold{1,2,3}_6seeds.json`).

    python docs/results/preference_range_val/traffic_reference.py   # ~15 s
"""
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
from barp_ray.scoring import reward_matrix, score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402

FOLDS = [("configs/llmrouter_ood_val.yaml", "runs/ablation/dshrink0/seed-*"),
         ("configs/llmrouter_ood_val_fold2.yaml", "runs/ablation/ood_fold2_k0.5/seed-*"),
         ("configs/llmrouter_ood_val_fold3.yaml", "runs/ablation/ood_fold3_k0.5/seed-*")]
NEIGHBOURS = [10, 30, 100, 300, 0]  # 0: all the traffic
KEEPS = [0.0, 0.25, 0.5]


def log_probs(module, x: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log(module.action_probabilities(x, pref).clamp_min(1e-30))


out = {}
for config, checkpoints in FOLDS:
    data = prepare(load_config(config), progress=False)
    xe = np.ascontiguousarray(data.test_embeddings, dtype=np.float32)
    x = torch.from_numpy(xe)
    modules = [RoutingPolicy.load(c).module for c in sorted(glob.glob(checkpoints))]
    for m in modules:
        m.set_decision_shrinkage(1.0)
    nearest = np.argsort(-(xe @ xe.T), axis=1)
    refs = {n: torch.from_numpy(np.ascontiguousarray(np.broadcast_to(xe.mean(0), xe.shape) if n == 0 else xe[nearest[:, :n]].mean(1)))
            for n in NEIGHBOURS}
    res, hindsight = {}, []
    for w in SWEEP:
        pref = torch.tensor(w, dtype=torch.float32).expand(len(x), 2)
        own = [log_probs(m, x, pref) for m in modules]

        def reward(logp: list[torch.Tensor]) -> float:
            return float(np.mean([score_actions(data.test, lp.argmax(-1).numpy(), w, data.tau).reward for lp in logp]))

        for n in NEIGHBOURS:
            at_ref = [log_probs(m, refs[n], pref) for m in modules]
            for k in KEEPS:
                # The decision's logits are linear in k, so mixing the two log-softmaxes ranks the models
                # as deciding at k would (each is off by a per-row constant).
                res.setdefault(f"m={n or 'all'} k={k:g}", []).append(reward([k * o + (1 - k) * r for o, r in zip(own, at_ref)]))
        res.setdefault("own (k=1)", []).append(reward(own))
        hindsight.append(float(reward_matrix(data.test, w, data.tau).mean(0).max()))
    res["hindsight single"] = hindsight
    print(config, flush=True)
    for name, r in res.items():
        at_or_above = sum(a >= b - 1e-12 for a, b in zip(r, hindsight))
        print(f"  {name:14s} mean {np.mean(r):.4f} >=hind {at_or_above:2d}  " + " ".join(f"{v:+.4f}" for v in r), flush=True)
    out[config] = res
dest = Path(__file__).with_name("traffic_reference_ood_folds_6seeds.json")
dest.write_text(json.dumps(out, indent=1))
print(f"wrote {dest}")
