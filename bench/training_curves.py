"""Draw a checkpoint's training curves: train reward and entropy per iteration, held-out reward
at w_q = 0, 0.5, 0.8, 1 every `output.log_every` iterations (the same numbers as the TensorBoard
event files in <checkpoint>/tensorboard, read from barp_meta.json's history).

    python bench/training_curves.py CHECKPOINT_DIR --out docs/results/preference_range_val/training_curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default=None)
    args = p.parse_args()
    history = json.loads((Path(args.checkpoint) / "barp_meta.json").read_text())["history"]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    it = [h["iteration"] for h in history]
    left.plot(it, [h["train_reward"] for h in history], color="C0", lw=1, label="train reward (sampled w)")
    ax2 = left.twinx()
    ax2.plot(it, [h["entropy"] for h in history], color="C3", lw=1, label="entropy")
    left.set_xlabel("iteration")
    left.set_ylabel("train reward")
    ax2.set_ylabel("policy entropy (nats)")
    left.legend(loc="lower left", fontsize=7)
    ax2.legend(loc="lower right", fontsize=7)
    logged = [h for h in history if "heldout_reward" in h]
    for i, w_q in enumerate(sorted(logged[0]["heldout_reward"], key=float) if logged else []):
        right.plot([h["iteration"] for h in logged], [h["heldout_reward"][w_q] for h in logged], "o-", ms=3,
                   color=f"C{i}", label=f"w_q = {float(w_q):g}")
    right.set_xlabel("iteration")
    right.set_ylabel("greedy reward on the held-out split")
    right.legend(fontsize=7)
    fig.suptitle(args.title or f"training curves: {args.checkpoint}")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
