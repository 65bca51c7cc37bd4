"""Would a familiarity fallback help on unseen tasks? A measurement, not a product feature.

For trained BaRP checkpoints on a validation config, route each held-out prompt by the policy when
it is familiar (mean cosine similarity of its 10 nearest training prompts >= theta) and otherwise
to a "generally best" model for that preference: with `--general policy`, the model the policy picks
greedily most often over the training prompts; with `--general critic`, the model with the best
mean critic estimate Q(x, w, a) over the training prompts (the critic is trained from the chosen
model's reward only). Everything the fallback uses is the policy, its critic and the training
prompts; no outcome of any model is read. Scores the 11-point sweep per theta (theta = 0: the
policy alone) and prints the reward minus the policy's own, per preference.

    python bench/familiarity_fallback.py --config configs/llmrouter_ood_val.yaml \
        --checkpoints 'runs/ablation/ca_it150/seed-*' --out docs/results/preference_range_val/familiarity_fallback_ood_val
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from barp_ray.training.early_stopping import SWEEP  # noqa: E402  (the 11-point sweep training's early stopping scores)


def familiarity(query: np.ndarray, index: np.ndarray, k: int = 10, chunk: int = 2048) -> np.ndarray:
    out = np.empty(len(query))
    for i in range(0, len(query), chunk):
        sims = query[i:i + chunk] @ index.T
        out[i:i + chunk] = np.sort(sims, axis=1)[:, -k:].mean(1)
    return out


def critic_estimates(ckpt: str, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt quality and cost estimates per model ([n, K] each) of a reward-shaped critic
    (training.critic_form: reward), read from the learner's full module in the RLlib checkpoint
    (the served module has no critic)."""
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    module = RLModule.from_checkpoint(str(Path(ckpt).resolve() / "learner_group/learner/rl_module/default_policy"))
    if getattr(module, "critic_form", None) != "reward" or module.baseline_head is None:
        raise SystemExit(f"{ckpt}: the critic's estimates need a reward-shaped critic (training.critic_form: reward)")
    with torch.no_grad():
        q, c = module.baseline_head(torch.from_numpy(np.ascontiguousarray(embeddings))).chunk(2, dim=-1)
    return q.numpy(), c.numpy()


def main() -> int:
    from barp_ray.config import load_config
    from barp_ray.data.prepare import prepare
    from barp_ray.policy import RoutingPolicy
    from barp_ray.scoring import greedy_actions, score_actions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoints", required=True, help="glob of checkpoint directories (one per seed)")
    p.add_argument("--thresholds", default="0,0.25,0.3,0.35,0.4,0.45")
    p.add_argument("--general", choices=("policy", "critic"), default="policy",
                   help="the fallback model: the policy's most frequent pick, or the critic's best mean estimate")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    data = prepare(load_config(args.config), progress=False)
    fam = familiarity(data.test_embeddings, data.train_embeddings)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    rewards = {t: [] for t in thresholds}  # per threshold: [seed][preference]
    for ckpt in sorted(glob.glob(args.checkpoints)):
        module = RoutingPolicy.load(ckpt).module
        mean_q = tuple(e.mean(0) for e in critic_estimates(ckpt, data.train_embeddings)) if args.general == "critic" else None
        per_t = {t: [] for t in thresholds}
        for w in SWEEP:
            policy = greedy_actions(module, data.test_embeddings, w)
            if mean_q is None:
                general = int(np.bincount(greedy_actions(module, data.train_embeddings, w), minlength=data.train.k).argmax())
            else:
                general = int(np.argmax(w[0] * mean_q[0] - w[1] * mean_q[1]))
            for t in thresholds:
                actions = np.where(fam >= t, policy, general)
                per_t[t].append(score_actions(data.test, actions, w, data.tau).reward)
        for t in thresholds:
            rewards[t].append(per_t[t])
    mean = {t: np.asarray(r).mean(0) for t, r in rewards.items()}
    base = mean[thresholds[0]]
    print(f"{args.config}: {len(rewards[thresholds[0]])} checkpoints; share of held-out prompts below theta:")
    print("| theta | fallback share | " + " | ".join(f"w_q={w[0]:g}" for w in SWEEP) + " | sweep mean |")
    print("|" + " --- |" * (len(SWEEP) + 3))
    for t in thresholds:
        diff = mean[t] - base
        print(f"| {t:g} | {np.mean(fam < t):.2f} | " + " | ".join(f"{d:+.4f}" for d in diff) + f" | {mean[t].mean():.4f} |")
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "checkpoints": args.checkpoints, "general": args.general, "preferences": [list(w) for w in SWEEP],
                               "fallback_share": {str(t): float(np.mean(fam < t)) for t in thresholds},
                               "reward": {str(t): mean[t].tolist() for t in thresholds},
                               "command": " ".join(sys.argv)}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
