"""Where the decision cost multiplier moved the OOD test's default preference (w = (0.8, 0.2)), per test task.
A diagnosis after the fact (session 49): it reads the test file's outcomes, so it chooses nothing.

The OOD test run's checkpoints (`barp eval --config configs/llmrouter_ood.yaml`, saved under
checkpoints/eval/llmrouter_ood/seed-*) decide with each multiplier in turn (training does not read it),
and each task's share of the reward difference to always sending the cheapest model (gemma-2-9b) is
printed, per 1 of the sweep's reward (so the tasks add up to the total).

    python docs/results/task_shift/ood_cost_multiplier_by_task.py   # ~1 min, after the OOD eval
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from barp_ray.config import load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402
from barp_ray.policy import RoutingPolicy  # noqa: E402
from barp_ray.scoring import greedy_actions, reward_matrix  # noqa: E402


def main() -> None:
    data = prepare(load_config(ROOT / "configs" / "llmrouter_ood.yaml"), progress=False)
    w = (0.8, 0.2)
    reward = reward_matrix(data.test, w, data.tau)
    tasks = np.asarray(data.test.tasks)
    cheapest = list(data.test.models).index("gemma-2-9b-it")
    rows = np.arange(data.test.n)
    checkpoints = sorted((ROOT / "checkpoints" / "eval" / "llmrouter_ood").glob("seed-*"))
    for m in (1.0, 3.0, 10.0):
        per_task, away = {t: [] for t in np.unique(tasks)}, []
        for ckpt in checkpoints:
            module = RoutingPolicy.load(str(ckpt)).module
            module.set_decision_cost_multiplier(m)
            a = greedy_actions(module, data.test_embeddings, w)
            away.append((a != cheapest).mean())
            for t in per_task:
                per_task[t].append((reward[rows, a] - reward[:, cheapest])[tasks == t].sum() / data.test.n)
        total = sum(np.mean(v) for v in per_task.values())
        print(f"m {m:g}: minus always gemma {total:+.4f}; prompts sent elsewhere {np.mean(away):.0%}; per task "
              + ", ".join(f"{t} {np.mean(v):+.4f}" for t, v in per_task.items()))


if __name__ == "__main__":
    main()
