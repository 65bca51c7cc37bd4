"""A decision-time cost multiplier out of distribution: route as the cost-aware head decides with
`policy.decision_cost_multiplier` m (its known cost term charged m times), on the three task-held-out folds, on top
of the shipped decision shrinkage (k = 0.5). A measurement.

Why: on a task it never saw, the price of a model is known and its score is a guess from other tasks.
`best_label_choices.py` shows the policy moving most fold-1 prompts at w_q 0.7-0.9 to the model that
is best on the training tasks by a thin margin (0.374 vs 0.361 at w_q 0.7), and that model is the
worst of the three cheap ones on the unseen tasks. Charging the price more (m > 1) is the risk-averse
decision when the quality term is uncertain and the cost is not. In distribution one global m was
flat (`decision_cost_multiplier.py`, session 39). m is chosen on two folds and read on the third.

    python docs/results/preference_range_val/ood_cost_multiplier.py OUT.json   # ~2 min (36 checkpoints)
    python docs/results/preference_range_val/ood_cost_multiplier.py OUT.json --shrinkage 0.25,0.5,0.75,1   # k and m together
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from barp_ray.training.early_stopping import SWEEP  # noqa: E402

from ood_folds import FOLDS, fold_checkpoints, sweep_rewards  # noqa: E402  (this folder)

MULTIPLIERS = [1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 50.0]


def charged_rewards(module, data, multipliers) -> dict[float, list[float]]:
    """Per m, the greedy reward at each w of the sweep as the module decides with decision_cost_multiplier m."""
    out = {}
    for m in multipliers:
        module.set_decision_cost_multiplier(m)
        out[m] = sweep_rewards(module, data)
    module.set_decision_cost_multiplier(1.0)
    return out


def main() -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--shrinkage", default="", help="also score these decision shrinkages k (comma-separated); "
                   "without it each checkpoint decides with its saved k (0.5)")
    args = p.parse_args()
    if args.shrinkage:
        return joint(args.out, [float(k) for k in args.shrinkage.split(",")])
    out = args.out
    reward = {str(f): {str(m): [] for m in MULTIPLIERS} for f in FOLDS}
    for fold, _, data, module in fold_checkpoints("oS"):
        for m, r in charged_rewards(module, data, MULTIPLIERS).items():  # with its saved shrinkage (k = 0.5)
            reward[str(fold)][str(m)].append(r)
    sweep = {f: {m: np.asarray(reward[f][str(m)]).mean(1) for m in MULTIPLIERS} for f in reward}
    print("| m | fold 1 | fold 2 | fold 3 | mean over folds |")
    print("| --- | --- | --- | --- | --- |")
    for m in MULTIPLIERS:
        cells = []
        for f in reward:
            d = sweep[f][m] - sweep[f][1.0]
            cells.append(f"{sweep[f][m].mean():.4f} ({d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}, {(d > 0).sum()}/{len(d)})")
        print(f"| {m:g} | " + " | ".join(cells) + f" | {np.mean([sweep[f][m].mean() for f in reward]):.4f} |")
    lofo = {}
    for held in reward:
        others = [f for f in reward if f != held]
        m = max(MULTIPLIERS, key=lambda v: np.mean([sweep[f][v].mean() for f in others]))
        d = sweep[held][m] - sweep[held][1.0]
        lofo[held] = {"m": m, "gain": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))), "ahead": int((d > 0).sum())}
        print(f"held-out fold {held}: m chosen on the others {m:g}, gain there {d.mean():+.4f} ± {lofo[held]['se']:.4f} ({(d > 0).sum()}/{len(d)})")
    out.write_text(json.dumps({"multipliers": MULTIPLIERS, "per_seed_reward": reward, "leave_one_fold_out": lofo,
                               "per_w_q": {f: {str(m): np.asarray(reward[f][str(m)]).mean(0).round(4).tolist() for m in MULTIPLIERS}
                                           for f in reward}}, indent=1))
    print(f"wrote {out}")


def joint(out: Path, ks: list[float]) -> None:
    """Every (k, m) pair on every fold's checkpoints; (k, m) chosen on two folds, read on the third."""
    grid = [(k, m) for k in ks for m in (1.0, 2.0, 3.0, 5.0)]
    per: dict[str, dict[tuple, list]] = {str(f): {g: [] for g in grid} for f in FOLDS}
    for fold, _, data, module in fold_checkpoints("oS"):
        for k in ks:
            module.set_decision_shrinkage(k)
            for m, r in charged_rewards(module, data, sorted({m for kk, m in grid if kk == k})).items():
                per[str(fold)][(k, m)].append(np.mean(r))
    sweep = {f: {g: np.asarray(v) for g, v in rows.items()} for f, rows in per.items()}
    shipped = (0.5, 3.0)
    print("| k, m | fold 1 | fold 2 | fold 3 | mean over folds |")
    print("| --- | --- | --- | --- | --- |")
    for g in grid:
        print(f"| {g[0]:g}, {g[1]:g} | " + " | ".join(f"{sweep[f][g].mean():.4f}" for f in sweep)
              + f" | {np.mean([sweep[f][g].mean() for f in sweep]):.4f} |")
    lofo = {}
    for held in sweep:
        others = [f for f in sweep if f != held]
        g = max(grid, key=lambda v: np.mean([sweep[f][v].mean() for f in others]))
        d = sweep[held][g] - sweep[held][shipped]
        lofo[held] = {"k_m": list(g), "minus_shipped": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d)))}
        print(f"held-out fold {held}: (k, m) chosen on the others {g}, minus the shipped (0.5, 3) there {d.mean():+.4f} ± {lofo[held]['se']:.4f}")
    out.write_text(json.dumps({"grid": [list(g) for g in grid], "leave_one_fold_out": lofo,
                               "per_seed_sweep": {f: {f"{g[0]:g},{g[1]:g}": v.tolist() for g, v in per.items()}
                                                  for f, per in sweep.items()}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
