"""Does a live budget hold when the traffic's mix changes? The pacer against a weight calibrated once.

    python bench/budget_pacing.py [--checkpoint checkpoints/barp-default] [--routes 3000]

The embedded synthetic world's held-out prompts, in two phases of `--routes` routes each: first
from three tasks, then from the other three. Every route sends no preference; the service's
`BudgetPacer` (`serve/pacing.py`, the class the router replicas run, with the serving defaults:
window 512, a scan every 128 routes, exploration epsilon 0.1) sets its weight, and the model is
drawn from the exploring policy. Three runs of the same routes:
- fixed: one weight, `barp calibrate`'s pick on 300 prompts of phase 1 (what an operator would set
  by hand before going live);
- paced, estimate: the pacer pricing routes by WordPiece input tokens and 256 answer tokens at the
  checkpoint's prices (`price_by: estimate`);
- paced, bill: the same, but each model with 20+ of the newest 256 bills priced at their mean
  (`price_by: bill`, the default; every route's bill is fed back at once, as the trainer would).
The budget is the middle of phase 1's estimated spend range. Per block of 250 routes it records the
weight, the estimate, the bill (the world's own cost of the model drawn: per-task answer lengths)
and the mean score.
Prints a table, writes docs/results/budget_pacing/budget_pacing.json and .png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import deque
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

PHASES = (("arithmetic", "translation", "trivia"), ("coding", "creative", "reasoning"))
BLOCK = 250


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "barp-default"))
    p.add_argument("--routes", type=int, default=3000, help="routes per phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "budget_pacing"))
    args = p.parse_args()

    import torch

    from barp_ray.config import load_config
    from barp_ray.data.prepare import prepare
    from barp_ray.encoder import count_tokens
    from barp_ray.policy import RoutingPolicy
    from barp_ray.data.llmrouter import route_costs
    from serve.budget import spend_curve, within_budget
    from serve.exploration import exploring_distribution
    from serve.pacing import BudgetPacer, PacedRoute
    from serve.settings import Budget, ExplorationSettings
    from serve.trainer import BILL_WINDOW, mean_bills

    torch.set_num_threads(1)
    if not (Path(args.checkpoint) / "barp_meta.json").is_file():
        sys.exit(f"{args.checkpoint}: no checkpoint; run `python -m barp_ray.train` first")
    policy = RoutingPolicy.load(args.checkpoint)
    data = prepare(load_config(None))  # the checkpoint's world: the embedded default
    test, h_all = data.test, data.test_embeddings
    if list(test.models) != list(policy.models):
        sys.exit(f"{args.checkpoint}: trained on {list(policy.models)}, not the embedded world's models")
    tokens_all = count_tokens(list(test.prompts), policy.encoder)
    prices = policy.meta["prices"]
    estimate_all = route_costs(prices, policy.models, tokens_all, 256)
    exploration = ExplorationSettings()
    rng = np.random.default_rng(args.seed)
    phase_rows = [np.flatnonzero(np.isin(test.tasks, tasks)) for tasks in PHASES]
    traffic = np.concatenate([rng.choice(rows, args.routes) for rows in phase_rows])

    sample = rng.choice(phase_rows[0], 300)
    curve = spend_curve(policy, h_all[sample], estimate_all[sample], exploration)
    spends = [c.dollars_per_1k for c in curve]
    budget = Budget(float(min(spends) + 0.5 * (max(spends) - min(spends))), 256)
    fixed_wq = within_budget(curve, budget.dollars_per_1k).w_q

    def serve_traffic(pacer: BudgetPacer | None) -> list[dict]:
        rows, draws = [], np.random.default_rng(args.seed + 1)
        bills = {m: deque(maxlen=BILL_WINDOW) for m in policy.models}
        for i in traffic:
            wq = pacer.w_q if pacer is not None else fixed_wq
            probs = policy.probabilities(h_all[i:i + 1], np.float32([[wq, 1.0 - wq]]))
            served = exploring_distribution(probs, exploration.epsilon, exploration.temperature)[0]
            a = int(draws.choice(len(served), p=served / served.sum()))
            rows.append({"w_q": wq, "estimate": float(served @ estimate_all[i]), "bill": float(test.costs[i, a]),
                         "score": float(test.scores[i, a])})
            bills[policy.models[a]].append(float(test.costs[i, a]))
            if pacer is not None:
                pacer.observe(PacedRoute(h_all[i], int(tokens_all[i]), np.ones(len(policy.models), dtype=bool), False))
                if pacer.due():
                    pacer.rescan(policy, prices, exploration, mean_bills(bills))
        return rows

    runs = {"fixed": serve_traffic(None),
            "paced, estimate": serve_traffic(BudgetPacer(dataclasses.replace(budget, price_by="estimate"), policy.models)),
            "paced, bill": serve_traffic(BudgetPacer(budget, policy.models))}
    blocks = {}
    for name, rows in runs.items():
        blocks[name] = [{"routes": (b + 1) * BLOCK, "phase": 1 + int(b * BLOCK >= args.routes),
                         **{k: float(np.mean([r[k] for r in rows[b * BLOCK:(b + 1) * BLOCK]])) for k in ("w_q", "estimate", "bill", "score")}}
                        for b in range(len(rows) // BLOCK)]
        for blk in blocks[name]:
            blk["estimate"], blk["bill"] = 1000 * blk["estimate"], 1000 * blk["bill"]

    def phase_mean(name, phase, key, skip=0):
        vals = [b[key] for b in blocks[name] if b["phase"] == phase][skip:]
        return float(np.mean(vals))

    # the pacer's first block of a phase still routes by the weight the previous mix set
    summary = {name: {f"phase {ph}": {k: phase_mean(name, ph, k, skip=0 if name == "fixed" else 1)
                                     for k in ("w_q", "estimate", "bill", "score")} for ph in (1, 2)} for name in runs}
    print(f"budget ${budget.dollars_per_1k:.3f} per 1,000 routes (estimated); fixed weight w_q = {fixed_wq:.2f} "
          f"(calibrated on 300 phase-1 prompts); {args.routes} routes per phase; phase 1 {PHASES[0]}, phase 2 {PHASES[1]}")
    print("\n| run | phase | w_q | estimated $/1k | billed $/1k | mean score |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in runs:
        for ph in (1, 2):
            s = summary[name][f"phase {ph}"]
            print(f"| {name} | {ph} | {s['w_q']:.2f} | {s['estimate']:.3f} | {s['bill']:.3f} | {s['score']:.3f} |")
    print("(paced: each phase without its first block of 250 routes, while the window fills with the new mix)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget_pacing.json").write_text(json.dumps({
        "checkpoint": args.checkpoint, "routes_per_phase": args.routes, "seed": args.seed, "phases": PHASES,
        "budget_per_1k": budget.dollars_per_1k, "fixed_w_q": fixed_wq, "block": BLOCK, "summary": summary, "blocks": blocks,
    }, indent=2))
    plot(blocks, budget.dollars_per_1k, args.routes, out / "budget_pacing.png")
    print(f"\nwrote {out / 'budget_pacing.json'} and budget_pacing.png")


def plot(blocks: dict, budget: float, routes: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name, style in (("paced, bill", "-"), ("paced, estimate", "-."), ("fixed", "--")):
        x = [b["routes"] for b in blocks[name]]
        top.plot(x, [b["estimate"] for b in blocks[name]], style, label=f"{name}: estimated")
        top.plot(x, [b["bill"] for b in blocks[name]], style, alpha=0.5, label=f"{name}: billed")
        bottom.plot(x, [b["w_q"] for b in blocks[name]], style, label=name)
    for ax in (top, bottom):
        ax.axvline(routes, color="grey", lw=0.8)
    top.axhline(budget, color="black", lw=0.8, label="budget")
    top.set_ylabel("$ per 1,000 routes")
    top.legend(fontsize=7)
    bottom.set_ylabel("w_q of the routes")
    bottom.set_xlabel("routes (the mix changes at the grey line)")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
