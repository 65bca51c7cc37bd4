"""Decision shrinkage toward the policy's decision at the *traffic's* mean prompt instead of the training
mean: the mean of each held-out prompt's m nearest held-out prompts (m = all: the whole traffic's
mean), at keep k. The held-out prompts' embeddings only, never an outcome: what a live service knows
of its traffic. A measurement on the three task-held-out validation folds (session 37).

    python docs/results/preference_range_val/traffic_reference.py   # ~15 s
"""
import glob, sys, os, json
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
import numpy as np, torch
from barp_ray.config import load_config
from barp_ray.data.prepare import prepare
from barp_ray.policy import RoutingPolicy
from barp_ray.scoring import reward_matrix, score_actions
from barp_ray.training.early_stopping import SWEEP

FOLDS = [("configs/llmrouter_ood_val.yaml", "runs/ablation/dshrink0/seed-*"),
         ("configs/llmrouter_ood_val_fold2.yaml", "runs/ablation/ood_fold2_k0.5/seed-*"),
         ("configs/llmrouter_ood_val_fold3.yaml", "runs/ablation/ood_fold3_k0.5/seed-*")]
if len(sys.argv) > 1:
    FOLDS = [tuple(a.split("::")) for a in sys.argv[1:]]
MS = [10, 30, 100, 300, 0]   # 0: all traffic
KS = [0.0, 0.25, 0.5]
out = {}
for cfgp, glb in FOLDS:
    data = prepare(load_config(cfgp), progress=False)
    xe = np.ascontiguousarray(data.test_embeddings, dtype=np.float32)
    x = torch.from_numpy(xe)
    mods = [RoutingPolicy.load(c).module for c in sorted(glob.glob(glb))]
    for m in mods: m.set_decision_shrinkage(1.0)
    sims = xe @ xe.T
    order = np.argsort(-sims, axis=1)
    refs = {}
    for M in MS:
        r = xe.mean(0, keepdims=True).repeat(len(xe), 0) if M == 0 else xe[order[:, :M]].mean(1)
        refs[M] = torch.from_numpy(np.ascontiguousarray(r))
    res = {}
    hind = []
    for w in SWEEP:
        pref = torch.tensor(w, dtype=torch.float32).expand(len(x), 2)
        with torch.no_grad():
            own = [torch.log(m.action_probabilities(x, pref).clamp_min(1e-30)) for m in mods]
            for M in MS:
                at_ref = [torch.log(m.action_probabilities(refs[M], pref).clamp_min(1e-30)) for m in mods]
                for k in KS:
                    vals = [score_actions(data.test, (k * o + (1 - k) * r).argmax(-1).numpy(), w, data.tau).reward
                            for o, r in zip(own, at_ref)]
                    res.setdefault(f"m={M or 'all'} k={k:g}", []).append(float(np.mean(vals)))
            for k in (0.0, 0.25, 0.5, 0.75):  # the shipped reference: the mean training prompt
                for m in mods: m.set_decision_shrinkage(k)
                res.setdefault(f"training mean k={k:g}", []).append(float(np.mean(
                    [score_actions(data.test, m.action_probabilities(x, pref).argmax(-1).numpy(), w, data.tau).reward for m in mods])))
                for m in mods: m.set_decision_shrinkage(1.0)
            res.setdefault("own (k=1)", []).append(float(np.mean([score_actions(data.test, o.argmax(-1).numpy(), w, data.tau).reward for o in own])))
        hind.append(float(reward_matrix(data.test, w, data.tau).mean(0).max()))
    res["hindsight single"] = hind
    print(cfgp, flush=True)
    for n, r in res.items():
        ge = sum(a >= b - 1e-12 for a, b in zip(r, hind))
        print(f"  {n:14s} mean {np.mean(r):.4f} >=hind {ge:2d}  " + " ".join(f"{v:+.4f}" for v in r), flush=True)
    out[cfgp] = res
dest = __import__("pathlib").Path(__file__).with_name("traffic_reference_ood_folds_6seeds.json")
dest.write_text(json.dumps(out, indent=1))
print(f"wrote {dest}")
