"""How often would "BaRP >= router X at 9 of 11 preferences" hold by the luck of the test prompts?

Why: issue 10 counts preferences where BaRP's mean reward (3 seeds) is >= a full-information
router's, on a 500-prompt test file. Each count is a coin toss where the two are tied, so the goal
needs a true edge at every w_q. This re-scores a committed `barp eval` run's BaRP checkpoints and
re-fits kNN and the score MLP per seed as the run did, takes BaRP minus each per test prompt (seeds
averaged), and resamples the prompts (bootstrap) with the observed per-w_q means replaced by a
uniform true edge d, to give P(count >= 9 of 11) for a few d. A diagnosis of the goal's resolution
on this file, after the fact; nothing is chosen with it.

    python bench/count_power.py --eval docs/results/llmrouter_id --out docs/results/task_shift/count_power_id.json   # ~1 min
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

EDGES = (0.0, 0.002, 0.004, 0.006, 0.008)
ROUTERS = ("kNN", "score MLP")


def per_prompt_differences(results: dict) -> dict[str, np.ndarray]:
    """{router: [preferences, prompts]} BaRP minus that router, averaged over the run's seeds."""
    from barp_ray.config import from_dict
    from barp_ray.data.prepare import prepare
    from barp_ray.evaluation.config import eval_config_from_dict
    from barp_ray.evaluation.experiment import PolicyRouter, fit_offline, load_checkpoint_for, score_router

    train_cfg, eval_cfg = from_dict(results["train_config"]), eval_config_from_dict({"eval": results["eval_config"]})
    data = prepare(train_cfg, progress=False)
    prefs, default = [tuple(w) for w in results["preferences"]], tuple(results["default_preference"])
    diffs: dict[str, list[np.ndarray]] = {r: [] for r in ROUTERS}
    for run in results["routers"]["BaRP"]["runs"]:
        barp = PolicyRouter(load_checkpoint_for(run["details"]["checkpoint"], data, train_cfg))
        mine = score_router(barp, data, prefs, default, None)[1]  # [preferences, prompts], as the run scored it
        for r in fit_offline(data, eval_cfg, prefs, run["seed"], progress=False):
            if r.name in ROUTERS:
                diffs[r.name].append(mine - score_router(r, data, prefs, default, None)[1])
    return {name: np.mean(d, axis=0) for name, d in diffs.items()}


def chance_of_count(diffs: list[np.ndarray], edge: float, need: int, draws: int, seed: int = 0) -> float:
    """P(at least `need` preferences with mean >= 0, against every router in `diffs` at once, the
    same prompts resampled for all) when each w_q's true difference is `edge` (w_q where every
    prompt ties, e.g. w_q 0 where all routers take the cheapest model, stay ties)."""
    rng = np.random.default_rng(seed)
    n = diffs[0].shape[1]
    tied = [np.all(d == 0, axis=1) for d in diffs]
    centred = [d - d.mean(1, keepdims=True) for d in diffs]
    hits = 0
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        ok = True
        for c, t in zip(centred, tied):
            m = c[:, idx].mean(1) + edge
            m[t] = 0.0
            ok &= bool((np.round(m, 4) >= 0).sum() >= need)
        hits += int(ok)
    return hits / draws


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", type=Path, required=True, help="a `barp eval` output folder (its results.json names the checkpoints)")
    p.add_argument("--need", type=int, default=9)
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    results = json.loads((args.eval / "results.json").read_text())
    missing = [r["details"]["checkpoint"] for r in results["routers"]["BaRP"]["runs"] if not Path(r["details"]["checkpoint"]).exists()]
    if missing:
        print(f"error: {args.eval}: the run's checkpoints are not on this machine ({missing[0]}); re-run its command", file=sys.stderr)
        return 2
    out = {"eval": str(args.eval), "need": args.need, "draws": args.draws, "routers": {}}
    print(f"{args.eval}: P(BaRP >= router at >= {args.need} of {len(results['preferences'])} preferences) "
          "if BaRP's true edge were d at every w_q")
    print("| router | observed mean difference per w_q | se per w_q | " + " | ".join(f"d = {d:g}" for d in EDGES) + " |")
    print("| --- | --- | --- |" + " --- |" * len(EDGES))
    diffs = per_prompt_differences(results)
    for name, diff in diffs.items():
        se = diff.std(1, ddof=1) / np.sqrt(diff.shape[1])
        chances = [chance_of_count([diff], d, args.need, args.draws) for d in EDGES]
        out["routers"][name] = {"mean_difference": diff.mean(1).tolist(), "se": se.tolist(),
                                "chance_by_edge": dict(zip(map(str, EDGES), chances))}
        print(f"| {name} | {' '.join(f'{x:+.4f}' for x in diff.mean(1))} | {' '.join(f'{x:.4f}' for x in se)} | "
              + " | ".join(f"{c:.2f}" for c in chances) + " |")
    both = [chance_of_count(list(diffs.values()), d, args.need, args.draws) for d in EDGES]
    out["all_at_once"] = dict(zip(map(str, EDGES), both))
    print(f"| {' and '.join(diffs)}, both | | | " + " | ".join(f"{c:.2f}" for c in both) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
