"""The critic's own decisions beside the policy's, on the validation draws: for each named setting
(runs/ablation/<name>/seed-s on seed s's draw) the policy's greedy choice, argmax of the critic's
w_q q - w_c c, and argmax of w_q q - w_c c_bar (each model's known mean normalised cost, as the score
MLP decides). Asks whether a better-regularised critic routes better than the policy that follows it.
Needs reward-shaped critics. A measurement (session 39); prints, writes nothing.

    python docs/results/preference_range_val/critic_vs_policy.py vs_shipped vd_w512_e0.5h0.5_it320   # ~2 min for 12 draws
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2] / "bench"))

import numpy as np  # noqa: E402

from familiarity_fallback import critic_estimates  # noqa: E402  (bench/)
from paired_sweep import ROOT, draws  # noqa: E402  (this folder)

from barp_ray.scoring import greedy_actions, score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402
from envs.reward import normalized_cost  # noqa: E402

names = sys.argv[1:]
rows: dict[tuple[str, str], list] = {}
for seed, data, modules in draws(names):
    if seed > 11:  # the twelve draws every setting here was trained on
        break
    cost_bar = normalized_cost(data.train.costs, data.tau).mean(0)
    score = lambda actions, w: score_actions(data.test, actions, w, data.tau).reward  # noqa: E731
    for n in names:
        q, c = critic_estimates(str(ROOT / "runs" / "ablation" / n / f"seed-{seed}"), data.test_embeddings)
        rows.setdefault((n, "policy"), []).append([score(greedy_actions(modules[n], data.test_embeddings, w), w) for w in SWEEP])
        rows.setdefault((n, "critic"), []).append([score((w[0] * q - w[1] * c).argmax(1), w) for w in SWEEP])
        rows.setdefault((n, "critic quality, known cost"), []).append([score((w[0] * q - w[1] * cost_bar).argmax(1), w) for w in SWEEP])
for (n, rule), v in rows.items():
    v = np.asarray(v)
    print(f"{n:28s} {rule:28s} sweep {v.mean():.4f} (draws 0-5 {v[:6].mean():.4f}, 6-11 {v[6:12].mean():.4f})")
