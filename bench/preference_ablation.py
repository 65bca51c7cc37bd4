"""Ablation for issue 10: which training switches let one BaRP policy serve the whole preference range.

Each variant is a named list of `--set` overrides on one config (a validation config: the test
file is never read). Per seed the full-information routers are fitted once and every variant is
trained and scored at the 11-point sweep, so all rows share the same split and baselines.
With `--vary-split` each seed also draws its own validation prompts (`data.seed` = the seed): a
split of 25 prompts per task is 250 prompts, too few to separate variants a few thousandths apart,
and repeated splits average that sampling out instead of fitting choices to one draw.

    python bench/preference_ablation.py --config configs/llmrouter_val.yaml --seeds 1 \
        --variant paper= --variant critic=training.baseline=critic,training.critic_kl_coeff=1 \
        --out docs/results/preference_range_val/ablation

Prints a table (AIQ, reward at the default w and at w_q = 1, wins against each full-information
router and against the best single model at each w) and writes `<out>.json` and `<out>.png`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from barp_ray.config import apply_overrides, load_config  # noqa: E402
from barp_ray.evaluation.config import EvalConfig  # noqa: E402
from barp_ray.evaluation.experiment import (  # noqa: E402
    PolicyRouter,
    default_preference,
    fit_offline,
    largest_model,
    preference_grid,
    reference_routers,
    score_router,
)
from barp_ray.evaluation.results import FULL_INFO, SINGLE, derive  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """NAME=a.b=1,c.d={kind: dirichlet, alpha: [0.5, 0.5]}: commas inside brackets stay in the value."""
    name, _, sets = text.partition("=")
    parts, depth, current = [], 0, ""
    for ch in sets:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return name, [s for s in [*parts, current] if s]


def run(args) -> dict:
    from barp_ray.data.prepare import prepare
    from barp_ray.policy import RoutingPolicy
    from barp_ray.training.run import train

    base = load_config(args.config)
    if args.set:
        base = apply_overrides(base, args.set)
    eval_cfg = EvalConfig()
    default = default_preference(base, eval_cfg)
    prefs = preference_grid(11, default)
    data = None if args.vary_split else prepare(base)  # with --vary-split, each seed prepares its own draw
    variants = [parse_variant(v) for v in args.variant]
    fixed: dict[str, dict] = {}
    trained: dict[str, dict] = {name: {"family": "bandit feedback (REINFORCE)", "tracks_preference": True, "runs": []} for name, _ in variants}
    timings: dict[str, list[float]] = {name: [] for name, _ in variants}
    quiet = open(os.devnull, "w")
    for seed in range(args.seeds):
        split = seed if args.vary_split else base.data.seed
        if args.vary_split:
            data = prepare(apply_overrides(base, [f"data.seed={split}"]), progress=False)
        for r in [*reference_routers(data), *fit_offline(data, eval_cfg, prefs, seed, progress=False)]:
            e = fixed.setdefault(r.name, {"family": r.family, "tracks_preference": r.tracks_preference, "runs": []})
            e["runs"].append({"seed": seed, **score_router(r, data, prefs, default, None)[0]})
        for name, sets in variants:
            cfg = apply_overrides(base, [*sets, f"data.seed={split}", f"training.seed={seed}", f"output.checkpoint_dir=runs/ablation/{name}/seed-{seed}"])
            t0 = time.time()
            result = train(cfg, progress=False, out=quiet)
            timings[name].append(time.time() - t0)
            router = PolicyRouter(RoutingPolicy.load(result.checkpoint))
            trained[name]["runs"].append({"seed": seed, **score_router(router, data, prefs, default, None)[0]})
            row = trained[name]["runs"][-1]["points"]
            print(f"seed {seed} {name:<28s} reward@default {row[prefs.index(default)]['reward']:+.4f}  "
                  f"@w_q=1 {row[-1]['reward']:+.4f}  ({timings[name][-1]:.0f}s)", flush=True)

    largest = data.train.models[largest_model(data.train, "auto")[0]]

    def derived(entry: dict) -> dict:
        """`derive`'s AIQ and dominance for one router, put in BaRP's seat beside the fixed routers."""
        return derive({"preferences": [list(w) for w in prefs], "default_preference": list(default),
                       "data": {"largest_model": largest},
                       "routers": {"BaRP": copy.deepcopy(entry), **copy.deepcopy(fixed)}})

    def mean_reward(entry: dict) -> np.ndarray:
        return np.asarray([[p["reward"] for p in run["points"]] for run in entry["runs"]]).mean(0)

    best_single = np.stack([mean_reward(e) for e in fixed.values() if e["family"] == SINGLE]).max(0)
    rows = {}
    for name, sets in variants:
        res = derived(trained[name])
        barp = mean_reward(trained[name])
        rows[name] = {
            "overrides": sets,
            "aiq": res["routers"]["BaRP"]["stats"]["aiq"],
            "reward": barp.tolist(),
            "wins": {n: d["reward_wins"] for n, d in res["dominance"].items()},
            "beats_best_single_at": int((barp >= best_single - 1e-12).sum()),
            # per seed, so two runs over the same seeds (and draws) compare paired, not only by their means
            "per_seed_reward": [[p["reward"] for p in run["points"]] for run in trained[name]["runs"]],
            "train_seconds": float(np.mean(timings[name])),
        }
    reference = {n: {"aiq": derived(e)["routers"]["BaRP"]["stats"]["aiq"], "reward": mean_reward(e).tolist()}
                 for n, e in fixed.items() if e["family"] == FULL_INFO}
    return {"config": args.config, "sets": args.set, "seeds": args.seeds, "vary_split": args.vary_split, "preferences": [list(w) for w in prefs],
            "default_preference": list(default), "variants": rows, "full_information": reference,
            "best_single": best_single.tolist(), "command": " ".join(sys.argv)}


def table(res: dict) -> str:
    prefs = [w[0] for w in res["preferences"]]
    di = prefs.index(res["default_preference"][0])
    names = list(res["full_information"])
    head = ["variant", "AIQ", f"reward w_q={prefs[di]:g}", "reward w_q=1", *[f"≥ {n}" for n in names], "≥ best single"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    n = len(prefs)
    for name, v in res["variants"].items():
        aiq = v["aiq"]
        lines.append("| " + " | ".join([
            name, f"{aiq[0]:.4f}" + (f" ± {aiq[1]:.4f}" if res["seeds"] > 1 else ""), f"{v['reward'][di]:+.4f}",
            f"{v['reward'][-1]:+.4f}", *[f"{v['wins'][k]}/{n}" for k in names], f"{v['beats_best_single_at']}/{n}",
        ]) + " |")
    for k, v in res["full_information"].items():
        lines.append(f"| {k} (full information) | {v['aiq'][0]:.4f} | {v['reward'][di]:+.4f} | {v['reward'][-1]:+.4f} |" + " |" * (len(names) + 1))
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefs = [w[0] for w in res["preferences"]]
    best = np.asarray(res["full_information"][max(res["full_information"], key=lambda k: res["full_information"][k]["aiq"][0])]["reward"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in res["variants"].items():
        ax.plot(prefs, np.asarray(v["reward"]) - best, marker="o", label=name)
    for name, v in res["full_information"].items():
        ax.plot(prefs, np.asarray(v["reward"]) - best, ls="--", color="grey", alpha=0.6)
    ax.plot(prefs, np.asarray(res["best_single"]) - best, ls=":", color="black", label="best single model")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("w_q (quality weight)")
    ax.set_ylabel("reward − best full-information router's")
    ax.set_title("Validation reward across the preference range (dashed: full-information routers)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/llmrouter_val.yaml")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="override applied to every variant")
    p.add_argument("--variant", action="append", required=True, help="NAME=section.field=value,section.field=value")
    p.add_argument("--out", default="docs/results/preference_range_val/ablation")
    p.add_argument("--vary-split", action="store_true", help="seed s holds out its own validation prompts (data.seed = s)")
    args = p.parse_args()
    res = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    plot(res, out.with_suffix(".png"))
    print(table(res))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
