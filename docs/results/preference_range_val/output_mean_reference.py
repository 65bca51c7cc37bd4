"""The decision shrinkage's reference as the decision head's mean output over the training prompts,
instead of its output at the mean training embedding. A measurement on the task-held-out folds.

Why: the shipped shrinkage pulls each decision toward out(h_bar, phi(w)), the head at the mean of the
training prompts' unit-length embeddings. That mean is a short vector no prompt resembles, so the
head's output there is an extrapolation: at w_q = 1 on fold 2 the decision at k = 0 routes every
prompt to a model 0.028 below the single model that is best on the training prompts. The mean of the
head's outputs over the training prompts, E_x'[out(h(x'), phi(w))], is the marginal decision the
policy actually learned, so shrinking toward it interpolates toward a prior the training supports.
Inference only: one training per seed, scored at each k with each reference.

    python docs/results/preference_range_val/output_mean_reference.py OUT.json   # ~3 min (36 checkpoints)
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from barp_ray.training.early_stopping import SWEEP  # noqa: E402
from ood_folds import fold_checkpoints, sweep_rewards  # noqa: E402  (this folder)

KS = (0.0, 0.25, 0.5, 0.75)


def output_mean_shrinkage(m, train: torch.Tensor):
    """Replace the module's shrinkage by one toward the head's mean output over `train` (same k, same gate)."""
    def shrunk(out: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        emb_dim = train.shape[1]
        # one preference per call here (the sweep scores one w at a time)
        assert torch.all(w == w[:1]), "one preference per batch"
        reference = m.decision_head(torch.cat([train, z[:1, emb_dim:].expand(len(train), -1)], dim=-1)).mean(0, keepdim=True)
        keep = 1.0 - (1.0 - m.decision_shrinkage) * w[:, 1:] if m.decision_shrinkage_gate == "cost" else m.decision_shrinkage
        return reference + keep * (out - reference)
    return shrunk


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--variant", default="oS", help="checkpoints runs/ablation/<variant>_fold<n>/seed-*")
    args = p.parse_args()
    result = {"variant": args.variant, "ks": KS, "preferences": [list(w) for w in SWEEP], "reward": {}}
    for fold, seed, data, m in fold_checkpoints(args.variant):
        train = torch.from_numpy(np.ascontiguousarray(data.train_embeddings, dtype=np.float32))
        shipped = m._shrunk_toward_reference
        per = {}
        for ref_name, fn in (("mean embedding", shipped), ("mean output", output_mean_shrinkage(m, train))):
            m._shrunk_toward_reference = fn
            for k in KS:
                m.set_decision_shrinkage(k)
                per[f"{ref_name}, k={k:g}"] = sweep_rewards(m, data)
        m._shrunk_toward_reference = shipped
        result["reward"].setdefault(str(fold), {})[seed] = per
        print(f"fold {fold} seed {seed} scored", flush=True)
    names = list(next(iter(result["reward"]["1"].values())))
    print("| rule | fold 1 | fold 2 | fold 3 | mean over folds | minus shipped (k = 0.5, mean embedding), per fold ± se |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = "mean embedding, k=0.5"
    summary = {}
    for n in names:
        sweeps, diffs = [], []
        for f in ("1", "2", "3"):
            per_seed = np.asarray([np.mean(r[n]) for r in result["reward"][f].values()])
            ref = np.asarray([np.mean(r[base]) for r in result["reward"][f].values()])
            sweeps.append(per_seed.mean())
            d = per_seed - ref
            diffs.append(f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f} ({(d > 0).sum()}/{len(d)})")
        summary[n] = {"sweep_per_fold": sweeps, "difference_per_fold": diffs}
        print(f"| {n} | " + " | ".join(f"{s:.4f}" for s in sweeps) + f" | {np.mean(sweeps):.4f} | " + "; ".join(diffs) + " |")
    result["summary"] = summary
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
