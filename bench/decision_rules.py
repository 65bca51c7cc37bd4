"""Other ways to turn trained BaRP checkpoints into a greedy routing decision. A measurement.

Per preference of the 11-point sweep, on a validation config's held-out prompts:
- `policy`: each checkpoint's own argmax (the mean over checkpoints: what one seed delivers);
- `ensemble`: the argmax of the checkpoints' mean probabilities (one router from all seeds);
- `critic`: each checkpoint's critic, argmax_a Q(x, w, a) (a reward model learned from the chosen
  model's reward only), needs `training.critic_form: reward`;
- `blend`: argmax of log pi + 0.25 * Q / 0.1 (the critic added once more at decision time, at the
  KL target's temperature);
- `gated shrinkage 0.6`: each checkpoint deciding with `decision_shrinkage` 0.6, gate `cost`;
- `familiar shrinkage`: a per-prompt k from 0.5 (a prompt as unfamiliar as the train prompts' 5th
  percentile, by mean cosine similarity to its 10 nearest train prompts) up to 1 (their median or
  closer), linear between: the decision shrinkage for a deployment that does not know whether its
  traffic comes from the training tasks;
- `k=...` (with `--shrinkage`): each checkpoint deciding with `decision_shrinkage` k, one training
  scored at every k (the shrinkage is inference only);
- `best single chosen on train` and `best single on these prompts` (hindsight): one model for every
  prompt, for reference.

    python bench/decision_rules.py --config configs/llmrouter_ood_val.yaml \
        --checkpoints 'runs/ablation/ood_shipped/seed-*' --out docs/results/preference_range_val/decision_rules_ood_val
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

from barp_ray.training.early_stopping import SWEEP  # noqa: E402
from familiarity_fallback import critic_estimates, familiarity  # noqa: E402  (bench/, this script's own folder)


def familiar_keep(test: np.ndarray, train: np.ndarray, low: float = 0.5) -> np.ndarray:
    """[n] decision shrinkage per held-out prompt: `low` at or below the train prompts' 5th
    percentile of familiarity (each train prompt scored against the others), 1 at their median."""
    sims = train @ train.T
    np.fill_diagonal(sims, -np.inf)
    lo, hi = np.percentile(np.sort(sims, axis=1)[:, -10:].mean(1), [5, 50])
    return low + (1.0 - low) * np.clip((familiarity(test, train) - lo) / (hi - lo), 0.0, 1.0)


def main() -> int:
    import torch

    from barp_ray.config import load_config
    from barp_ray.data.prepare import prepare
    from barp_ray.policy import RoutingPolicy
    from barp_ray.scoring import best_single_model, reward_matrix, score_actions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoints", required=True, help="glob of checkpoint directories (one per seed)")
    p.add_argument("--out", required=True)
    p.add_argument("--shrinkage", default="", help="comma-separated decision shrinkages k to score, e.g. 0,0.25,0.5,0.75")
    args = p.parse_args()
    try:
        ks = [float(k) for k in args.shrinkage.split(",") if k.strip()]
    except ValueError:
        raise SystemExit(f"--shrinkage: need numbers separated by commas, got {args.shrinkage!r}") from None
    if any(not 0.0 <= k <= 1.0 for k in ks):
        raise SystemExit(f"--shrinkage: each k must lie in [0, 1], got {args.shrinkage!r}")
    data = prepare(load_config(args.config), progress=False)
    ckpts = sorted(glob.glob(args.checkpoints))
    if not ckpts:
        raise SystemExit(f"--checkpoints: no directory matches {args.checkpoints!r}")
    x = torch.from_numpy(np.ascontiguousarray(data.test_embeddings))
    policies = [RoutingPolicy.load(c).module for c in ckpts]
    for m in policies:  # each checkpoint's own argmax, whatever decision shrinkage it was saved with
        m.set_decision_shrinkage(1.0)
    try:
        critics = [tuple(map(torch.from_numpy, critic_estimates(c, data.test_embeddings))) for c in ckpts]
    except SystemExit as why:  # a known_cost critic has no per-prompt cost estimate to decide with
        print(f"{why}: the critic and blend rules are left out")
        critics = None

    def score(actions: torch.Tensor, w) -> float:
        return score_actions(data.test, actions.numpy(), w, data.tau).reward

    def probabilities_at(m, k: float, pref: torch.Tensor, gate: str = "none") -> torch.Tensor:
        """The checkpoint's routing probabilities deciding with decision_shrinkage k (then back to 1)."""
        m.set_decision_shrinkage(k, gate)
        with torch.no_grad():
            out = m.action_probabilities(x, pref)
        m.set_decision_shrinkage(1.0)
        return out

    keep = familiar_keep(np.ascontiguousarray(data.test_embeddings, dtype=np.float32),
                         np.ascontiguousarray(data.train_embeddings, dtype=np.float32))[:, None]
    rows: dict[str, list[float]] = {"policy": [], "ensemble": [], "critic": [], "blend": [], "gated shrinkage 0.6": [],
                                    "familiar shrinkage": [], **{f"k={k:g}": [] for k in ks},
                                    "best single chosen on train": [], "best single on these prompts": []}
    for w in SWEEP:
        pref = torch.tensor(w, dtype=torch.float32).expand(len(x), 2)
        with torch.no_grad():
            probs = [m.action_probabilities(x, pref) for m in policies]
        rows["policy"].append(float(np.mean([score(pr.argmax(-1), w) for pr in probs])))
        rows["ensemble"].append(score(torch.stack(probs).mean(0).argmax(-1), w))
        if critics is not None:
            rows["critic"].append(float(np.mean([score((w[0] * q - w[1] * c).argmax(-1), w) for q, c in critics])))
            rows["blend"].append(float(np.mean([score((torch.log(pr) + 0.25 * (w[0] * q - w[1] * c) / 0.1).argmax(-1), w)
                                                for pr, (q, c) in zip(probs, critics)])))
        rows["gated shrinkage 0.6"].append(float(np.mean([score(probabilities_at(m, 0.6, pref, "cost").argmax(-1), w)
                                                          for m in policies])))
        familiar = []
        for m, pr in zip(policies, probs):
            average = torch.log(probabilities_at(m, 0.0, pref).clamp_min(1e-30)).numpy()
            # The decision's logits are linear in k, so interpolating the two log-softmaxes (each
            # off by a per-row constant) ranks the models as deciding at k(x) would (the clamp keeps
            # 0 * log 0 out of it).
            mixed = keep * torch.log(pr.clamp_min(1e-30)).numpy() + (1.0 - keep) * average
            familiar.append(score(torch.from_numpy(mixed.argmax(-1)), w))
        rows["familiar shrinkage"].append(float(np.mean(familiar)))
        for k in ks:
            rows[f"k={k:g}"].append(float(np.mean([score(probabilities_at(m, k, pref).argmax(-1), w) for m in policies])))
        held_out = reward_matrix(data.test, w, data.tau).mean(axis=0)  # each single model on every held-out prompt
        rows["best single chosen on train"].append(float(held_out[best_single_model(data.train, w, data.tau)]))
        rows["best single on these prompts"].append(float(held_out.max()))
    rows = {name: r for name, r in rows.items() if r}
    print(f"{args.config}: {len(ckpts)} checkpoints, greedy reward on the held-out prompts")
    print("| rule | " + " | ".join(f"w_q={w[0]:g}" for w in SWEEP) + " | sweep mean |")
    print("|" + " --- |" * (len(SWEEP) + 2))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:+.4f}" for v in r) + f" | {np.mean(r):.4f} |")
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "checkpoints": ckpts, "preferences": [list(w) for w in SWEEP],
                               "reward": rows, "command": " ".join(sys.argv)}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
