"""A memory of revealed outcomes beside the policy: a measurement from session 34, not shipped.

The simulated online loop revisits every train prompt ~100 times (250 iterations x 4,096 rounds over
~10k prompts), and each round reveals the chosen model's score. With
`revealed_outcomes_log_prototype.patch` applied, training saves which (prompt, model) pairs were
revealed (`observed.npy` in the checkpoint directory). This script then routes each held-out prompt
by a per-model kNN over the *revealed* scores only: for model a, the mean score over the k nearest
train prompts on which a was revealed, priced at its known mean normalised cost, as the kNN baseline
prices. Alone, and added to the policy's log-probabilities at the KL target's temperature
(log pi + beta * r_hat / 0.1). Two live-like memories are scored too: one revealed model per train
prompt, drawn uniformly or by the final policy at a random preference, as when each prompt arrives
once. `full` is the full-information kNN at the same k, for reference.

    # with revealed_outcomes_log_prototype.patch applied:
    python docs/results/preference_range_val/revealed_outcome_memory.py train NAME CONFIG SETS_FILE
    python docs/results/preference_range_val/revealed_outcome_memory.py score NAME CONFIG DECISION_SHRINKAGE OUT.json

`train` trains seeds 0-5 into runs/ablation/NAME/seed-s, seed s on split `data.seed` = s (the
ablation's `--vary-split`), with the comma-separated overrides in SETS_FILE.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import numpy as np  # noqa: E402

SEEDS = range(6)
NEIGHBOURS = (10, 20, 50)
BLEND = (0.25, 0.5, 1.0)


def train_seeds(name: str, config: str, sets_file: str) -> None:
    from barp_ray.config import apply_overrides, load_config
    from barp_ray.training.run import train

    sets = Path(sets_file).read_text().strip().split(",")
    for s in SEEDS:
        out = Path(f"runs/ablation/{name}/seed-{s}")
        out.mkdir(parents=True, exist_ok=True)
        os.environ["BARP_LOG_OBSERVED"] = str((out / "observed.npy").resolve())
        cfg = apply_overrides(load_config(config), [*sets, f"data.seed={s}", f"training.seed={s}", f"output.checkpoint_dir={out}"])
        train(cfg, progress=False, out=open(os.devnull, "w"))
        print(f"trained seed {s}", flush=True)


def per_model_knn(query: np.ndarray, index: np.ndarray, scores: np.ndarray, revealed: np.ndarray, k: int) -> np.ndarray:
    """[n, K]: each model's mean revealed score over the query's k nearest prompts where it was revealed."""
    from barp_ray.evaluation.baselines.full_info import knn_mean

    out = np.zeros((len(query), scores.shape[1]))
    for a in range(scores.shape[1]):
        rows = np.flatnonzero(revealed[:, a])
        out[:, a] = knn_mean(query, index[rows], scores[rows, a : a + 1], k)[:, 0]
    return out


def score_seeds(name: str, config: str, shrinkage: float, out: str) -> None:
    import torch

    from barp_ray.config import apply_overrides, load_config
    from barp_ray.data.prepare import prepare
    from barp_ray.policy import RoutingPolicy
    from barp_ray.scoring import score_actions
    from barp_ray.training.early_stopping import SWEEP
    from envs.reward import normalized_cost

    rows: dict[str, np.ndarray] = {}
    shares = []
    for s in SEEDS:
        ckpt = f"runs/ablation/{name}/seed-{s}"
        data = prepare(apply_overrides(load_config(config), [f"data.seed={s}"]), progress=False)
        held_out = np.ascontiguousarray(data.test_embeddings, dtype=np.float32)
        train = np.ascontiguousarray(data.train_embeddings, dtype=np.float32)
        scores, n_models = data.train.scores, data.train.scores.shape[1]
        revealed = np.load(f"{ckpt}/observed.npy")
        shares.append(revealed.mean(0))
        known_cost = normalized_cost(data.train.costs, data.tau).mean(0)
        module = RoutingPolicy.load(ckpt).module
        module.set_decision_shrinkage(shrinkage)
        rng = np.random.default_rng(s)
        uniform = np.zeros_like(revealed)
        uniform[np.arange(len(train)), rng.integers(n_models, size=len(train))] = True
        w_q = rng.uniform(size=len(train)).astype(np.float32)
        with torch.no_grad():
            p = module.action_probabilities(torch.from_numpy(train), torch.from_numpy(np.stack([w_q, 1 - w_q], 1))).double().numpy()
        by_policy = np.zeros_like(revealed)
        by_policy[np.arange(len(train)), [rng.choice(n_models, p=r / r.sum()) for r in p]] = True
        memories = {"revealed in training": revealed, "one per prompt, uniform": uniform, "one per prompt, by the policy": by_policy}
        estimates = {f"{m}, k={k}": per_model_knn(held_out, train, scores, mask, k) for k in NEIGHBOURS for m, mask in memories.items()}
        estimates.update({f"full information, k={k}": per_model_knn(held_out, train, scores, np.ones_like(revealed), k) for k in NEIGHBOURS})
        for i, w in enumerate(SWEEP):
            def score(choice: np.ndarray) -> float:
                return score_actions(data.test, choice, w, data.tau).reward

            with torch.no_grad():
                pref = torch.tensor(w, dtype=torch.float32).expand(len(held_out), 2)
                log_pi = torch.log(module.action_probabilities(torch.from_numpy(held_out), pref).clamp_min(1e-30)).numpy()
            rows.setdefault("policy", np.zeros((len(SEEDS), len(SWEEP))))[s, i] = score(log_pi.argmax(-1))
            for label, q in estimates.items():
                r_hat = w[0] * q - w[1] * known_cost
                rows.setdefault(label, np.zeros((len(SEEDS), len(SWEEP))))[s, i] = score(r_hat.argmax(-1))
                if not label.startswith("full"):
                    for beta in BLEND:
                        blended = f"policy + {beta:g} x {label}"
                        rows.setdefault(blended, np.zeros((len(SEEDS), len(SWEEP))))[s, i] = score((log_pi + beta * r_hat / 0.1).argmax(-1))
    print("share of train prompts on which each model was revealed (mean over seeds):", np.mean(shares, 0).round(2))
    print("| rule | " + " | ".join(f"w_q={w[0]:g}" for w in SWEEP) + " | sweep mean |")
    for label, r in rows.items():
        m = r.mean(0)
        print(f"| {label} | " + " | ".join(f"{v:+.4f}" for v in m) + f" | {m.mean():.4f} |")
    Path(out).write_text(json.dumps({"command": " ".join(sys.argv), "revealed_share": np.mean(shares, 0).tolist(),
                                     "reward": {k: v.mean(0).tolist() for k, v in rows.items()}}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "train":
        train_seeds(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "score":
        score_seeds(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit(__doc__)
