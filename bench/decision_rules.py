"""Other ways to turn trained BaRP checkpoints into a greedy routing decision. A measurement.

Per preference of the 11-point sweep, on a validation config's held-out prompts:
- `policy`: each checkpoint's own argmax (the mean over checkpoints: what one seed delivers);
- `ensemble`: the argmax of the checkpoints' mean probabilities (one router from all seeds);
- `critic`: each checkpoint's critic, argmax_a Q(x, w, a) (a reward model learned from the chosen
  model's reward only), needs `training.critic_form: reward`;
- `blend`: argmax of log pi + 0.25 * Q / 0.1 (the critic added once more at decision time, at the
  KL target's temperature);
- `gated shrinkage 0.6`: each checkpoint deciding with `decision_shrinkage` 0.6, gate `cost`.

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
from familiarity_fallback import critic_estimates  # noqa: E402  (bench/, this script's own folder)


def main() -> int:
    import torch

    from barp_ray.config import load_config
    from barp_ray.data.prepare import prepare
    from barp_ray.policy import RoutingPolicy
    from barp_ray.scoring import score_actions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoints", required=True, help="glob of checkpoint directories (one per seed)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    data = prepare(load_config(args.config), progress=False)
    ckpts = sorted(glob.glob(args.checkpoints))
    if not ckpts:
        raise SystemExit(f"--checkpoints: no directory matches {args.checkpoints!r}")
    x = torch.from_numpy(np.ascontiguousarray(data.test_embeddings))
    policies = [RoutingPolicy.load(c).module for c in ckpts]
    critics = [tuple(map(torch.from_numpy, critic_estimates(c, data.test_embeddings))) for c in ckpts]

    def score(actions: torch.Tensor, w) -> float:
        return score_actions(data.test, actions.numpy(), w, data.tau).reward

    rows: dict[str, list[float]] = {"policy": [], "ensemble": [], "critic": [], "blend": [], "gated shrinkage 0.6": []}
    for w in SWEEP:
        pref = torch.tensor(w, dtype=torch.float32).expand(len(x), 2)
        with torch.no_grad():
            probs = [m.action_probabilities(x, pref) for m in policies]
        rows["policy"].append(float(np.mean([score(pr.argmax(-1), w) for pr in probs])))
        rows["ensemble"].append(score(torch.stack(probs).mean(0).argmax(-1), w))
        rows["critic"].append(float(np.mean([score((w[0] * q - w[1] * c).argmax(-1), w) for q, c in critics])))
        rows["blend"].append(float(np.mean([score((torch.log(pr) + 0.25 * (w[0] * q - w[1] * c) / 0.1).argmax(-1), w)
                                            for pr, (q, c) in zip(probs, critics)])))
        shrunk = []
        for m in policies:
            m.set_decision_shrinkage(0.6, "cost")
            with torch.no_grad():
                shrunk.append(score(m.action_probabilities(x, pref).argmax(-1), w))
            m.set_decision_shrinkage(1.0)
        rows["gated shrinkage 0.6"].append(float(np.mean(shrunk)))
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
