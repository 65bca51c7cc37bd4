"""Zero-shot check for issue 13: a model the policy never trained on, offered with its card.

Per seed, on LLMRouter (the provided train/test files, the model-conditioned head):
  * retrained:  trained from scratch with every model (the full training budget);
  * without:    trained with `--held-out` removed, and routing among the remaining models only;
  * zero-shot:  the same weights, now offered every model (the held-out one described by its
                card: prices and size, and the shared "unknown" vector) - no feedback yet;
  * +N rounds:  the zero-shot policy after N simulated bandit-feedback rounds with every model
                (`training.init_from`: the same RLlib learner and loss, only the chosen model's
                outcome is seen).
Each is scored greedily on the test prompts at the 11-point preference sweep: mean reward over
the sweep, reward at the default preference and at w_q = 1, and the share of test prompts routed to
the held-out model (with the oracle's share for scale).

    python bench/new_model.py --seeds 3 --out docs/results/new_model/zero_shot

Prints a table and writes `<out>.json` and `<out>.png`. Settings are the LLMRouter config's
(chosen on validation); nothing here is tuned on the test prompts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from barp_ray.config import apply_overrides, load_config, with_head  # noqa: E402
from barp_ray.evaluation.experiment import preference_grid  # noqa: E402
from barp_ray.evaluation.metrics import operating_point  # noqa: E402


def evaluate(policy, data, prefs) -> dict:
    """Greedy routing of `policy` (over whichever models it offers) on the full test table."""
    test = data.test
    cols = [test.models.index(m) for m in policy.models]
    rewards, shares = [], []
    for w in prefs:
        probs = policy.probabilities(data.test_embeddings, np.asarray(w, dtype=np.float32))
        choice = np.zeros((test.n, test.k))
        choice[np.arange(test.n), np.asarray(cols)[probs.argmax(1)]] = 1.0
        rewards.append(operating_point(test.scores, test.costs, choice, w, data.tau).reward)
        shares.append(choice.mean(0))
    return {"reward": rewards, "share": np.asarray(shares).tolist()}


def oracle_share(data, prefs) -> list[list[float]]:
    from barp_ray.scoring import reward_matrix

    out = []
    for w in prefs:
        best = reward_matrix(data.test, w, data.tau).argmax(1)
        out.append(np.bincount(best, minlength=data.test.k) / data.test.n)
    return np.asarray(out).tolist()


def run(args) -> dict:
    from barp_ray.data.prepare import prepare
    from barp_ray.model_cards import cards_for
    from barp_ray.policy import RoutingPolicy
    from barp_ray.training.run import train

    base = apply_overrides(with_head(load_config(args.config or None), "model_conditioned"), args.set)
    data = prepare(base)
    if args.held_out not in data.train.models:
        raise SystemExit(f"--held-out: {args.held_out!r} is not one of {list(data.train.models)}")
    base = apply_overrides(base, [f"env.tau={data.tau!r}"])  # the same cost cap with or without the model
    prefs = preference_grid(11, tuple(base.env.eval_preference))
    cards = cards_for(data.train.models, data.train.prices, data.train.sizes)
    quiet = open(os.devnull, "w")
    runs: dict[str, list[dict]] = {}

    def record(name: str, policy, seconds: float) -> None:
        runs.setdefault(name, []).append({**evaluate(policy, data, prefs), "seconds": seconds})
        r = runs[name][-1]["reward"]
        print(f"seed {seed} {name:<14s} mean {np.mean(r):+.4f}  w_q=1 {r[-1]:+.4f}  ({seconds:.0f}s)", flush=True)

    for seed in range(args.seeds):
        root = Path(args.workdir) / f"seed-{seed}"

        def trained(name: str, sets: list[str]) -> tuple[RoutingPolicy, float]:
            cfg = apply_overrides(base, [*sets, f"training.seed={seed}", f"output.checkpoint_dir={root / name}"])
            t0 = time.time()
            result = train(cfg, progress=False, out=quiet)
            return RoutingPolicy.load(result.checkpoint), time.time() - t0

        policy, secs = trained("retrained", [])
        record("retrained", policy, secs)
        held, secs = trained("held_out", [f"data.exclude_models={json.dumps([args.held_out])}"])
        record("without", held, secs)
        held.offer(cards)
        record("zero-shot", held, 0.0)
        for n in args.rounds:
            its = max(1, n // args.rounds_per_iteration)
            policy, secs = trained(f"after_{n}", [f"training.init_from={root / 'held_out'}",
                                                  f"training.iterations={its}",
                                                  f"training.rounds_per_iteration={args.rounds_per_iteration}",
                                                  *args.continue_set])
            record(f"+{its * args.rounds_per_iteration} rounds", policy, secs)

    held_col = data.test.models.index(args.held_out)
    summary = {}
    for name, rs in runs.items():
        reward = np.asarray([r["reward"] for r in rs])
        share = np.asarray([[s[held_col] for s in r["share"]] for r in rs])
        mean = reward.mean(1)
        summary[name] = {"mean_reward": [float(mean.mean()), float(mean.std())], "reward": reward.mean(0).tolist(),
                         "held_out_share": share.mean(0).tolist()}
    return {"config": args.config, "held_out": args.held_out, "held_out_card": cards[held_col].as_dict(),
            "seeds": args.seeds, "preferences": [list(w) for w in prefs], "default_preference": list(base.env.eval_preference),
            "tau": data.tau, "oracle_held_out_share": [s[held_col] for s in oracle_share(data, prefs)],
            "arms": summary, "runs": runs, "command": " ".join(sys.argv)}


def table(res: dict) -> str:
    prefs = [w[0] for w in res["preferences"]]
    di = prefs.index(res["default_preference"][0])
    lines = [f"| policy | mean reward over the sweep | reward w_q={prefs[di]:g} | reward w_q=1 | share to {res['held_out']} at w_q={prefs[di]:g} / 1 |",
             "| --- | --- | --- | --- | --- |"]
    for name, a in res["arms"].items():
        m, s = a["mean_reward"]
        lines.append(f"| {name} | {m:.4f}" + (f" ± {s:.4f}" if res["seeds"] > 1 else "") +
                     f" | {a['reward'][di]:+.4f} | {a['reward'][-1]:+.4f} | {a['held_out_share'][di]:.1%} / {a['held_out_share'][-1]:.1%} |")
    o = res["oracle_held_out_share"]
    lines.append(f"| (oracle) | | | | {o[di]:.1%} / {o[-1]:.1%} |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = res["arms"]
    after = [(int(n.split()[0][1:]), a["mean_reward"]) for n, a in arms.items() if n.endswith("rounds")]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [1] + [n for n, _ in after]
    ys = [arms["zero-shot"]["mean_reward"]] + [v for _, v in after]
    ax.errorbar(xs, [y[0] for y in ys], yerr=[y[1] for y in ys], marker="o", label="zero-shot, then N feedback rounds")
    for name, style in (("retrained", "--"), ("without", ":")):
        ax.axhline(arms[name]["mean_reward"][0], ls=style, color="grey", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("simulated feedback rounds with the new model offered (1 = none)")
    ax.set_ylabel("test reward, mean over the preference sweep")
    ax.set_title(f"New model {res['held_out']}: zero-shot and adoption")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/llmrouter.yaml")
    p.add_argument("--held-out", default="llama-3.1-nemotron-51b-instruct")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--rounds", type=int, nargs="*", default=[4096, 16384, 65536, 262144])
    p.add_argument("--rounds-per-iteration", type=int, default=4096)
    p.add_argument("--set", action="append", default=[], help="override applied to every run")
    p.add_argument("--continue-set", action="append", default=[],
                   help="override for the feedback continuation only, e.g. training.minibatch_size=256")
    p.add_argument("--workdir", default="runs/new_model")
    p.add_argument("--out", default="docs/results/new_model/zero_shot")
    args = p.parse_args()
    res = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    plot(res, out.with_suffix(".png"))
    print(table(res))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
