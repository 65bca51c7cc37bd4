"""Task bagging for unseen tasks (session 50, a measurement; nothing in the code changes).

Out of distribution the policy over-trusts what it learned per prompt on the training tasks. An ensemble
whose members each trained without one of those tasks (leave-one-task-out members, routed by their mean
probabilities) keeps confident deviations only where they hold across task subsets, the way
leave-domain-out bagging is meant to generalise to new domains. Session 43's ensemble of members on all
tasks tied out of distribution, so the comparison here is paired against that: per fold, four mixtures
of three task-bagged members against four mixtures of three full-data seeds (the same training seeds),
with the shipped OOD setting and decision (k = 0.5, prices 3x) on the three task-held-out folds. tau is
fixed to each fold's auto value, so a member without a task trains and decides at the fold's cost cap.

    python docs/results/preference_range_val/task_bagging_ood.py train    # ~45 min here
    python docs/results/preference_range_val/task_bagging_ood.py score OUT.json
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from ood_folds import FOLDS, sweep_rewards  # noqa: E402  (this folder)
from paired_sweep import ROOT, MeanOf, draws  # noqa: E402

from barp_ray.config import apply_overrides, load_config  # noqa: E402
from barp_ray.data import load_records, write_records  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402
from barp_ray.training.run import train  # noqa: E402

S = ("training.baseline=critic,training.critic_kl_coeff=1,training.critic_form=known_cost,policy.head=cost_aware,"
     "training.entropy_coeff=0.02,training.iterations=150,policy.decision_shrinkage=0.5,policy.decision_cost_multiplier=3").split(",")
SEEDS = range(12)
GROUPS = [list(SEEDS[i:i + 3]) for i in range(0, len(SEEDS), 3)]


def left_out_task(fold_tasks: list[str], seed: int) -> str:
    """Member `seed` of a fold trains without this task; each group of three leaves out three different ones."""
    order = np.random.default_rng(1000 + seed // 3).permutation(len(fold_tasks))
    return fold_tasks[order[seed % 3]]


def fold_setup(fold: int):
    cfg = load_config(ROOT / FOLDS[fold])
    data = prepare(cfg, progress=False)
    train_tasks = sorted(set(data.train.tasks))
    return cfg, data.tau, train_tasks


def run_training() -> None:
    quiet = open(os.devnull, "w")
    table = load_records(ROOT / "runs" / "llmrouter_ood_train.parquet")
    for fold in FOLDS:
        cfg, tau, tasks = fold_setup(fold)
        base = apply_overrides(cfg, [*S, f"env.tau={float(tau)!r}"])
        for seed in SEEDS:
            full = ROOT / "runs" / "ablation" / f"oBase_fold{fold}" / f"seed-{seed}"
            if not full.exists():
                train(apply_overrides(base, [f"training.seed={seed}", f"output.checkpoint_dir={full}"]), progress=False, out=quiet)
            task = left_out_task(tasks, seed)
            path = ROOT / "runs" / "ood_bags" / f"without_{task}.parquet"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_records(table.subset(np.flatnonzero([t != task for t in table.tasks])), path)
            bag = ROOT / "runs" / "ablation" / f"oBag_fold{fold}" / f"seed-{seed}"
            if not bag.exists():
                train(apply_overrides(base, [f"data.path={path}", f"training.seed={seed}", f"output.checkpoint_dir={bag}"]),
                      progress=False, out=quiet)
            print(f"fold {fold} seed {seed}: bag without {task}", flush=True)


def run_scoring(out: Path) -> None:
    result = {"command": " ".join(sys.argv), "folds": {}}
    all_diff, all_mixing = [], []
    for fold, config in FOLDS.items():
        _, tau, tasks = fold_setup(fold)
        names = [f"oBase_fold{fold}", f"oBag_fold{fold}"]
        full, bagged = [], []  # per seed: a full-data policy, a member without one task
        for _, data, modules in draws(names, ROOT / config, sets=[f"env.tau={float(tau)!r}"]):
            full.append(modules[names[0]])
            bagged.append(modules[names[1]])
        singles = np.asarray([sweep_rewards(m, data) for m in full])  # the fold's split is the same for every seed
        ens = np.asarray([sweep_rewards(MeanOf([full[s] for s in g]), data) for g in GROUPS])
        bags = np.asarray([sweep_rewards(MeanOf([bagged[s] for s in g]), data) for g in GROUPS])
        diff = bags.mean(1) - ens.mean(1)
        all_diff += diff.tolist()
        mixing = ens.mean(1) - np.asarray([singles[g].mean() for g in GROUPS])  # a mixture minus its own seeds' mean
        all_mixing += mixing.tolist()
        result["folds"][fold] = {
            "left_out": {s: left_out_task(tasks, s) for s in SEEDS}, "single_sweep": float(singles.mean()),
            "ensemble_sweep": float(ens.mean()), "task_bag_sweep": float(bags.mean()),
            "task_bag_minus_ensemble": diff.tolist(), "ensemble_minus_its_seeds": mixing.tolist(), "per_w_q_difference": (bags - ens).mean(0).tolist(),
            "ensemble_per_w_q": ens.mean(0).tolist(), "task_bag_per_w_q": bags.mean(0).tolist()}
        print(f"fold {fold}: one policy {singles.mean():.4f}, ensemble {ens.mean():.4f}, task bag {bags.mean():.4f}; "
              f"bag minus ensemble {diff.mean():+.4f} ± {diff.std(ddof=1) / 2:.4f} ({(diff > 0).sum()} of 4 ahead)", flush=True)
    d = np.asarray(all_diff)
    m = np.asarray(all_mixing)
    result["mean_over_folds_minus_ensemble"] = float(d.mean())
    result["ensemble_minus_its_seeds"] = {"mean": float(m.mean()), "se": float(m.std(ddof=1) / np.sqrt(len(m))), "ahead": int((m > 0).sum())}
    print(f"all folds: a full-data mixture minus its own seeds' mean {m.mean():+.4f} ± {m.std(ddof=1) / np.sqrt(len(m)):.4f} ({(m > 0).sum()} of {len(m)})")
    print(f"all folds: bag minus ensemble {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f} ({(d > 0).sum()} of {len(d)})")
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    run_training() if sys.argv[1] == "train" else run_scoring(Path(sys.argv[2]))
