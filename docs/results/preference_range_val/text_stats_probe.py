"""Does a prompt's text say more than its embedding about which model answers it? A full-information
score MLP (the `barp eval` baseline's network) fitted on h(x), on h(x) plus the six text statistics of
`barp_ray/prompt_stats.py`, and, as a control for the mere change of input width, on h(x) plus six
columns of noise; each routes every validation draw at the 11-point sweep. Session 48's first step,
before any BaRP run: it takes ~1 min for twelve draws, against ~12 min for one BaRP variant.

    python docs/results/preference_range_val/text_stats_probe.py --draws 12 --out OUT.json
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from barp_ray.config import apply_overrides, load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402
from barp_ray.evaluation.baselines.full_info import MLPSettings, TrainView, _forward, train_mlp  # noqa: E402
from barp_ray.prompt_stats import NAMES, text_stats  # noqa: E402
from barp_ray.scoring import score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402
from envs.reward import normalized_cost  # noqa: E402


def sweep(data, x_train, x_test, seed: int) -> list[float]:
    """The score MLP fitted on x_train (early-stopped on 10 % of it), routing the draw's held-out prompts."""
    view = TrainView.build(x_train, data.train.scores, data.train.costs, data.tau, 0.1, seed)
    net = train_mlp(x_train[view.fit_index], data.train.scores[view.fit_index], x_train[view.val_index],
                    data.train.scores[view.val_index], "bce", MLPSettings(), seed)
    q = 1.0 / (1.0 + np.exp(-_forward(net, x_test)))
    c = normalized_cost(data.train.costs, data.tau).mean(axis=0)
    return [score_actions(data.test, (w[0] * q - w[1] * c).argmax(1), w, data.tau).reward for w in SWEEP]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "configs" / "llmrouter_val_balanced.yaml"))
    p.add_argument("--draws", type=int, default=12)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    base = load_config(args.config)
    per = {"h": [], "h+stats": [], "h+noise": []}
    for d in range(args.draws):
        data = prepare(apply_overrides(base, [f"data.seed={d}"]))
        h, h_test = data.train_embeddings, data.test_embeddings
        noise = np.random.default_rng(d)
        inputs = {
            "h": (h, h_test),
            "h+stats": (np.hstack([h, text_stats(data.train.prompts)]), np.hstack([h_test, text_stats(data.test.prompts)])),
            "h+noise": (np.hstack([h, noise.standard_normal((len(h), len(NAMES)), dtype=np.float32)]),
                        np.hstack([h_test, noise.standard_normal((len(h_test), len(NAMES)), dtype=np.float32)])),
        }
        for name, (x, x_test) in inputs.items():
            per[name].append(sweep(data, x, x_test, d))
        print(f"draw {d}: " + "  ".join(f"{n} {np.mean(v[-1]):.4f}" for n, v in per.items()), flush=True)
    ref = np.asarray(per["h"])
    out = {"config": args.config, "draws": args.draws, "sweep_mean": {n: float(np.mean(v)) for n, v in per.items()}, "minus_h": {}}
    for name in ("h+stats", "h+noise"):
        diff = np.asarray(per[name]).mean(1) - ref.mean(1)
        out["minus_h"][name] = {"mean": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                                "draws_ahead": int((diff > 0).sum()), "per_w_q": (np.asarray(per[name]) - ref).mean(0).tolist()}
        print(f"{name} minus h: {diff.mean():+.4f} ± {out['minus_h'][name]['se']:.4f}, ahead on {(diff > 0).sum()}/{len(diff)} draws; per w_q "
              + " ".join(f"{x:+.4f}" for x in out["minus_h"][name]["per_w_q"]))
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
