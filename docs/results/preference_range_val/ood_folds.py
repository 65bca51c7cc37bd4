"""The three task-held-out validation folds and their checkpoints, shared by the out-of-distribution
decision-rule measurements of session 49 (`shrinkage_by_preference.py`, `output_mean_reference.py`,
`ood_cost_multiplier.py`, `best_label_choices.py`), and session 50's `task_bagging_ood.py`."""
from pathlib import Path
from typing import Iterator

from paired_sweep import ROOT, draws  # this folder

from barp_ray.scoring import greedy_actions, score_actions
from barp_ray.training.early_stopping import SWEEP

FOLDS = {1: "configs/llmrouter_ood_val.yaml", 2: "configs/llmrouter_ood_val_fold2.yaml", 3: "configs/llmrouter_ood_val_fold3.yaml"}


def fold_checkpoints(variant: str) -> Iterator[tuple[int, int, object, object]]:
    """(fold, seed, that fold's prepared data, the module of runs/ablation/<variant>_fold<fold>/seed-<seed>)."""
    for fold, config in FOLDS.items():
        name = f"{variant}_fold{fold}"
        for seed, data, modules in draws([name], Path(ROOT) / config):
            yield fold, seed, data, modules[name]


def sweep_rewards(module, data) -> list[float]:
    """The module's greedy reward on the held-out prompts at each w of the 11-point sweep, as it decides now."""
    return [score_actions(data.test, greedy_actions(module, data.test_embeddings, w), w, data.tau).reward for w in SWEEP]
