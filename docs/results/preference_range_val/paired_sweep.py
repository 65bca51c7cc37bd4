"""Paired per-seed comparison of `bench/preference_ablation.py --vary-split` runs on the task-balanced
split: each variant's checkpoints (runs/ablation/<name>/seed-s) scored on seed s's own validation draw,
sweep mean per seed, minus the first variant's. Checkpoints only; nothing is trained.

    python docs/results/preference_range_val/paired_sweep.py OUT.json vs_shipped vn_nc0.3 vn_nc1   # ~1 min
    python docs/results/preference_range_val/paired_sweep.py --config configs/llmrouter_ood_val_fold2.yaml OUT.json oS_fold2 oCD_fold2
    python docs/results/preference_range_val/paired_sweep.py --set env.tau=0.0005 OUT.json ref_tau5 pown3_tau5   # variants trained at that cap

A name `a+b+c` is an ensemble: the argmax of those variants' mean action probabilities (e.g. one
setting trained with three training seeds on each draw, `screen_variants.py --seed-offset`).
Only the seeds every named variant has are compared. Another validation config (a task-held-out fold)
scores its own held-out tasks; there data.seed does not move the split, so seeds pair training runs.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterator

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from barp_ray.config import apply_overrides, load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402
from barp_ray.policy import RoutingPolicy  # noqa: E402
from barp_ray.scoring import greedy_actions, score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402


def draws(names: list[str], config: Path = ROOT / "configs" / "llmrouter_val_balanced.yaml",
          only: range | None = None, sets: list[str] = ()) -> Iterator[tuple[int, object, dict]]:
    """(seed, that seed's prepared validation draw, {name: its checkpoint's module}) per seed every
    variant was trained with (and in `only`, if given); an ensemble name `a+b` loads a and b."""
    base = apply_overrides(load_config(config), list(sets))
    members = sorted({m for n in names for m in n.split("+")})
    trained = [{int(p.name.split("-")[1]) for p in (ROOT / "runs" / "ablation" / m).glob("seed-*")} for m in members]
    for seed in sorted(s for s in set.intersection(*trained) if only is None or s in only):
        data = prepare(apply_overrides(base, [f"data.seed={seed}"]), progress=False)
        yield seed, data, {m: RoutingPolicy.load(str(ROOT / "runs" / "ablation" / m / f"seed-{seed}")).module for m in members}


class MeanOf:
    """Several checkpoints as one router: their mean action probabilities (what greedy_actions reads)."""

    def __init__(self, modules: list):
        self.modules = modules

    def action_probabilities(self, embedding, preference):
        """Each module reads the leading columns it was trained on (with or without the text statistics)."""
        return torch.stack([m.action_probabilities(embedding[:, :m.observation_space["embedding"].shape[0]], preference)
                            for m in self.modules]).mean(0)


def ensemble_actions(modules: list, embeddings: np.ndarray, preference) -> np.ndarray:
    """One module's greedy choice, or for several the argmax of their mean probabilities. Each reads the
    leading columns it was trained on: h(x) alone, or h(x) and the text statistics that follow it when the
    draw was prepared with `--set encoder.text_stats=true`."""
    if len(modules) > 1:
        return greedy_actions(MeanOf(modules), embeddings, preference)
    return greedy_actions(modules[0], embeddings[:, :modules[0].observation_space["embedding"].shape[0]], preference)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "llmrouter_val_balanced.yaml")
    p.add_argument("out", type=Path)
    p.add_argument("names", nargs="+", help="the reference variant first")
    p.add_argument("--set", action="append", default=[], help="score under this override too, e.g. env.tau=0.0005 "
                   "for variants trained with it (a fixed cost cap changes every reward), or encoder.text_stats=true "
                   "to compare variants with and without them (each reads its own columns)")
    args = p.parse_args()
    config, out, names = args.config, args.out, args.names
    seeds, per = [], {n: [] for n in names}
    for seed, data, modules in draws(names, config, sets=args.set):
        seeds.append(seed)
        for n in names:
            group = [modules[m] for m in n.split("+")]
            per[n].append([score_actions(data.test, ensemble_actions(group, data.test_embeddings, w), w, data.tau).reward
                           for w in SWEEP])
    ref = np.asarray(per[names[0]])
    result = {"config": str(config), "set": args.set, "reference": names[0], "seeds": seeds,
              "reference_sweep_mean": float(ref.mean()), "reference_per_w_q": ref.mean(0).tolist(), "variants": {}}
    for n in names[1:]:
        diff = np.asarray(per[n]).mean(1) - ref.mean(1)
        se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
        result["variants"][n] = {"sweep_mean": float(np.mean(per[n])), "per_seed_difference": diff.tolist(),
                                 "mean_difference": float(diff.mean()), "se": se, "seeds_ahead": int((diff > 0).sum()),
                                 "per_w_q": np.asarray(per[n]).mean(0).tolist(),
                                 "per_w_q_difference": (np.asarray(per[n]) - ref).mean(0).tolist()}
        print(f"{n}: sweep {np.mean(per[n]):.4f}, minus {names[0]} {diff.mean():+.4f} ± {se:.4f} (se), "
              f"ahead on {(diff > 0).sum()}/{len(diff)} seeds")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
