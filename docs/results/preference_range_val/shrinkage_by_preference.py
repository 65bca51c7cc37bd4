"""Decision shrinkage as a function of the preference, chosen across the three task-held-out folds.

Why: the shipped out-of-distribution decision keeps half (k = 0.5) of each prompt's own deviation
from the average training prompt's decision, at every w. Sessions 32-34 scored k per fold and saw
that the best k moves with w_q: at w_q <= 0.6 the average prompt's choice (k = 0) is best or tied on
every fold, while at the top of the range the policy's own choice (k -> 1) wins on two of three. A
wrong per-prompt deviation on an unseen task costs its price for sure and buys an uncertain score,
and price weighs most at low w_q. Shrinkage is inference only, so one training per seed is scored at
every k; the decision at one w_q depends only on the k used there, so any schedule k(w_q) over the
grid is scored from the same table.

Selection is honest across folds: each schedule family's parameters are chosen on two folds and the
gain is read on the third (leave one fold out), and the final parameters on all three.

    python docs/results/preference_range_val/shrinkage_by_preference.py OUT.json          # ~3 min (36 checkpoints)
    python docs/results/preference_range_val/shrinkage_by_preference.py OUT.json --table-only   # re-read OUT.json
"""
import argparse
import itertools
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from ood_folds import FOLDS  # noqa: E402  (this folder)

GRID = [round(0.1 * i, 1) for i in range(11)]


def score_grid(variant: str) -> dict:
    """reward[fold][seed][k][w]: each fold's checkpoints runs/ablation/<variant>_fold<n>/seed-s."""
    from barp_ray.training.early_stopping import SWEEP
    from ood_folds import fold_checkpoints, sweep_rewards

    out: dict[str, dict] = {str(f): {} for f in FOLDS}
    for fold, seed, data, m in fold_checkpoints(variant):
        table = []
        for k in GRID:
            m.set_decision_shrinkage(k)
            table.append(sweep_rewards(m, data))
        out[str(fold)][seed] = table
        print(f"fold {fold} seed {seed} scored", flush=True)
    return {"variant": variant, "grid": GRID, "preferences": [list(w) for w in SWEEP], "reward": out}


def fold_tables(result: dict) -> dict[int, np.ndarray]:
    """fold -> [seeds, k, w] rewards."""
    return {int(f): np.asarray([t for _, t in sorted(per.items(), key=lambda kv: int(kv[0]))]) for f, per in result["reward"].items()}


def schedules() -> dict[str, list[tuple[tuple, np.ndarray]]]:
    """family -> [(parameters, k index per w on the 11-point sweep)]."""
    wq = np.round(np.linspace(0, 1, 11), 1)
    idx = lambda ks: np.asarray([GRID.index(round(float(k), 1)) for k in ks])  # noqa: E731
    fams = {"constant k": [((k,), idx([k] * 11)) for k in GRID]}
    fams["step: k_lo below c, k_hi from c"] = [((lo, hi, c), idx(np.where(wq < c, lo, hi)))
                                                for lo, hi in itertools.product(GRID, GRID) for c in np.round(np.arange(0.3, 1.01, 0.1), 1)]
    # only the low end moves: the shipped k = 0.5 kept from c up (where the folds disagree)
    fams["step: k_lo below c, the shipped 0.5 from c"] = [((lo, c), idx(np.where(wq < c, lo, 0.5)))
                                                          for lo in GRID for c in np.round(np.arange(0.3, 1.01, 0.1), 1)]
    # the shipped "cost" gate's shape: keep = 1 - (1 - k) * w_c, rounded to the grid
    fams["cost gate: 1 - (1 - k) w_c"] = [((k,), idx(np.round(1 - (1 - k) * (1 - wq), 1))) for k in GRID]
    return fams


def report(result: dict) -> dict:
    tables = fold_tables(result)
    fams = schedules()
    k05 = GRID.index(0.5)

    def sweep(fold: int, ks: np.ndarray) -> np.ndarray:
        """per-seed sweep mean of a schedule on one fold."""
        t = tables[fold]
        return t[:, ks, np.arange(11)].mean(1)

    summary = {}
    for fam, options in fams.items():
        # leave one fold out: pick the parameters maximising the mean sweep over the other two folds
        lofo = {}
        for held in tables:
            others = [f for f in tables if f != held]
            best = max(options, key=lambda o: np.mean([sweep(f, o[1]).mean() for f in others]))
            gain = sweep(held, best[1]) - sweep(held, np.full(11, k05))
            lofo[held] = {"chosen_on_others": list(tuple(float(v) for v in best[0])), "gain_vs_k0.5": float(gain.mean()),
                          "se": float(gain.std(ddof=1) / np.sqrt(len(gain))), "seeds_ahead": int((gain > 0).sum()), "seeds": len(gain)}
        best_all = max(options, key=lambda o: np.mean([sweep(f, o[1]).mean() for f in tables]))
        per_fold = {f: float((sweep(f, best_all[1]) - sweep(f, np.full(11, k05))).mean()) for f in tables}
        summary[fam] = {"leave_one_fold_out": lofo, "chosen_on_all": [float(v) for v in best_all[0]],
                        "k_per_w_q": [GRID[i] for i in best_all[1]], "gain_vs_k0.5_per_fold_in_sample": per_fold}
        print(f"\n{fam}: chosen on all three folds {tuple(float(v) for v in best_all[0])} -> k per w_q {[GRID[i] for i in best_all[1]]}")
        print("| held-out fold | chosen on the other two | gain vs k = 0.5 on the held-out fold ± se | seeds ahead |")
        print("| --- | --- | --- | --- |")
        for f, r in lofo.items():
            print(f"| {f} | {tuple(r['chosen_on_others'])} | {r['gain_vs_k0.5']:+.4f} ± {r['se']:.4f} | {r['seeds_ahead']} / {r['seeds']} |")
    per_w = {f: {f"k={k:g}": tables[f][:, i].mean(0).round(4).tolist() for i, k in enumerate(GRID)} for f in tables}
    return {"families": summary, "mean_per_w_q": per_w}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--variant", default="oS", help="checkpoints runs/ablation/<variant>_fold<n>/seed-*")
    p.add_argument("--table-only", action="store_true", help="re-read OUT.json's scores instead of scoring")
    args = p.parse_args()
    result = json.loads(args.out.read_text()) if args.table_only else score_grid(args.variant)
    result["analysis"] = report(result)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
