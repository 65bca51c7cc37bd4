"""Per-prompt known costs: a measurement of session 55, not a lever shipped.

Every router here (BaRP's cost-aware head, kNN, the score MLP) charges each model its *mean*
normalised training cost. A prompt's own cost is knowable before routing (its input tokens at the
model's price, plus the assumed answer), and on LLMRouter it varies: sd ~35 % of the mean for the
small models. If charging it moved decisions, a BaRP head that charges it could buy an edge. This
asks the cheaper question first, with the full-information routers, on validation only: three random
10 % draws of the train file (the test file is never read), kNN and the score MLP fitted on the rest,
each routed at the 11-point sweep once with the mean cost and once with the prompt's own.

    python docs/results/preference_range_val/per_prompt_cost.py runs/llmrouter_train.parquet docs/results/preference_range_val/per_prompt_cost.json
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import numpy as np  # noqa: E402

from barp_ray.data import load_records  # noqa: E402
from barp_ray.encoder import cached_embeddings  # noqa: E402
from barp_ray.evaluation.baselines.full_info import KNNRouter, ScoreMLPRouter, TrainView  # noqa: E402
from envs.reward import normalized_cost, reward  # noqa: E402

TAUS = {"auto": 0.000299, "0.0005": 0.0005}  # tau auto as the in-distribution config resolves it on this file
DRAWS = 3


def main(records: str, out: str) -> None:
    table = load_records(records)
    emb = cached_embeddings(list(table.prompts), "packaged")
    scores, costs = np.asarray(table.scores), np.asarray(table.costs)
    prefs = [(round(q, 1), round(1 - q, 1)) for q in np.linspace(0, 1, 11)]
    result = {"preferences": [p[0] for p in prefs], "runs": []}
    for tau_name, tau in TAUS.items():
        for draw in range(DRAWS):
            order = np.random.default_rng(100 + draw).permutation(len(scores))
            held, fit = order[: len(scores) // 10], order[len(scores) // 10:]
            view = TrainView.build(emb[fit], scores[fit], costs[fit], tau, 0.1, draw)
            own_cost = normalized_cost(costs[held], tau)
            for router in (KNNRouter().fit(view, prefs), ScoreMLPRouter().fit(view, prefs, draw)):
                q_hat, rows = router.predict_scores(emb[held]), np.arange(len(held))
                mean_cost, per_prompt = [], []
                for wq, wc in prefs:
                    r = reward(scores[held], costs[held], wq, wc, tau)
                    mean_cost.append(float(r[rows, np.argmax(wq * q_hat - wc * view.mean_normalized_cost(), 1)].mean()))
                    per_prompt.append(float(r[rows, np.argmax(wq * q_hat - wc * own_cost, 1)].mean()))
                run = {"tau": tau_name, "draw": draw, "router": router.name.split(" (")[0],
                       "mean_cost": mean_cost, "per_prompt_cost": per_prompt}
                result["runs"].append(run)
                gain = np.subtract(per_prompt, mean_cost)
                print(f"tau {tau_name:6s} draw {draw} {run['router']:10s} sweep {np.mean(mean_cost):.4f} -> "
                      f"{np.mean(per_prompt):.4f} ({gain.mean():+.4f}; largest at one w_q {gain.max():+.4f})")
    gains = np.array([np.subtract(r["per_prompt_cost"], r["mean_cost"]) for r in result["runs"]])
    result["sweep_gain_mean"], result["sweep_gain_sd"] = float(gains.mean(1).mean()), float(gains.mean(1).std(ddof=1))
    print(f"sweep gain over {len(gains)} runs: {result['sweep_gain_mean']:+.4f} +- {result['sweep_gain_sd']:.4f}")
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
