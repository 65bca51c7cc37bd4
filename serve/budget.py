"""`barp calibrate CHECKPOINT --budget D --prompts FILE`: the preference that spends D dollars per 1,000 routes.

Operators budget in dollars; the policy reads a weight w = (w_q, w_c). On a sample of the traffic
this scans w_q from 0 to 1, estimates the spend of routing the sample at each, and picks the largest
w_q (the most weight on quality) whose spend fits the budget. The scan, not a bisection: a learned
policy's spend need not fall monotonically with w_c.

The spend estimate prices each (prompt, model) as training did for LLMRouter: the prompt's WordPiece
token count times the model's input price, plus an assumed answer length times its output price,
with the checkpoint's prices. `--mode explore` (the default) prices the service's exploring policy,
mu = (1 - epsilon) pi^(1/temperature) + epsilon / K (`serve/exploration.py`, the serving defaults
unless given), which spends more than greedy routing when a pricey model is among the models. The estimate is the policy's routing on the sample,
not the bill: answer lengths vary, so check `/v1/stats` and the feedback costs once it is live.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from barp_ray.data.llmrouter import route_costs
from barp_ray.policy import stated_answer_tokens
from barp_ray.route_cli import InputError, load_policy, prompt_records
from serve.exploration import exploring_distribution
from serve.settings import ExplorationSettings, SettingsError

PROG = "barp calibrate"
GRID = np.round(np.linspace(0.0, 1.0, 101), 2)


@dataclass
class SpendPoint:
    w_q: float
    dollars_per_1k: float
    shares: dict[str, float]  # expected share of routes per model


def spend_curve(policy, h: np.ndarray, costs: np.ndarray, exploration: ExplorationSettings | None, grid=GRID,
                masks: np.ndarray | None = None, greedy: np.ndarray | None = None) -> list[SpendPoint]:
    """Expected dollars per 1,000 routes of these prompts (`h`: what the policy reads of them) at every
    w_q of the grid, routed as the service routes: by the exploring policy over each row's allowed
    models (`masks`), or by its argmax (exploration None, or the rows `greedy` marks)."""
    n, k = costs.shape
    masks = np.ones((n, k), dtype=bool) if masks is None else masks
    greedy = np.zeros(n, dtype=bool) if greedy is None else greedy  # read only when exploring
    curve = []
    for wq in grid:
        probs = policy.probabilities(h, np.tile(np.float32([wq, 1.0 - wq]), (n, 1)))
        argmax = np.eye(k)[exploring_distribution(probs, 0.0, 1.0, masks).argmax(-1)]
        choice = argmax if exploration is None else np.where(
            greedy[:, None], argmax, exploring_distribution(probs, exploration.epsilon, exploration.temperature, masks))
        curve.append(SpendPoint(float(wq), float(1000 * (choice * costs).sum(1).mean()),
                                {m: float(x) for m, x in zip(policy.models, choice.mean(0))}))
    return curve


def within_budget(curve: list[SpendPoint], budget: float) -> SpendPoint | None:
    fits = [p for p in curve if p.dollars_per_1k <= budget]
    return max(fits, key=lambda p: p.w_q) if fits else None


def read_prompts(path: str) -> list[str]:
    """One prompt per line, or JSONL records with a string 'prompt' (a feedback or traffic export)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"--prompts: cannot read {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"--prompts: {path!r} is not UTF-8 text") from None
    first = next((line for line in lines if line.strip()), "")
    try:
        prompts = [r["prompt"] for _, r in prompt_records(lines, jsonl=first.lstrip().startswith("{"))]
    except InputError as e:
        raise InputError(f"--prompts: {e}") from None
    if not prompts:
        raise InputError(f"--prompts: {path!r} holds no prompts")
    return prompts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint directory or storage URI (what `barp train` wrote)")
    p.add_argument("--budget", type=float, required=True, metavar="DOLLARS", help="target spend in dollars per 1,000 routes")
    p.add_argument("--prompts", required=True, metavar="FILE", help="a sample of the traffic: one prompt per line, or JSONL with 'prompt'")
    p.add_argument("--output-tokens", type=int, metavar="N",
                   help="assumed answer length in tokens (default: the checkpoint's data.output_tokens, if one number)")
    p.add_argument("--mode", choices=("greedy", "explore"), default="explore",
                   help="price the serving policy's exploration too (default) or greedy routing only")
    p.add_argument("--epsilon", type=float, default=ExplorationSettings.epsilon,
                   help=f"exploration floor with --mode explore (default: the serving default, {ExplorationSettings.epsilon})")
    p.add_argument("--temperature", type=float, default=ExplorationSettings.temperature,
                   help=f"exploration temperature with --mode explore (default: {ExplorationSettings.temperature})")
    p.add_argument("--json", metavar="FILE", help="also write the whole scan here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _calibrate(args)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _calibrate(args: argparse.Namespace) -> int:
    if not (np.isfinite(args.budget) and args.budget > 0):
        raise InputError(f"--budget: must be a positive number of dollars per 1,000 routes, got {args.budget}")
    exploration = None
    if args.mode == "explore":
        exploration = ExplorationSettings(epsilon=args.epsilon, temperature=args.temperature)
        try:
            exploration.validate()
        except SettingsError as e:
            raise InputError("--" + str(e).removeprefix("exploration.")) from None
    if args.output_tokens is not None and args.output_tokens < 0:
        raise InputError(f"--output-tokens: must be >= 0, got {args.output_tokens}")
    prompts = read_prompts(args.prompts)

    policy = load_policy(args.checkpoint)
    output_tokens = args.output_tokens
    if output_tokens is None:
        output_tokens = stated_answer_tokens(policy.meta)
        if output_tokens is None:
            raise InputError("--output-tokens: required: the checkpoint's data.output_tokens is not one number")
    missing = [m for m in policy.models if m not in policy.meta.get("prices", {})]
    if missing:
        raise InputError(f"{args.checkpoint}: no prices for model(s) {missing} in the checkpoint")

    from barp_ray.encoder import count_tokens

    costs = route_costs(policy.meta["prices"], policy.models, count_tokens(prompts, policy.encoder), output_tokens)
    curve = spend_curve(policy, policy.observe(prompts), costs, exploration)
    pick = within_budget(curve, args.budget)
    print(f"{len(prompts)} prompts, {args.mode} routing"
          + (f" (epsilon {args.epsilon}, temperature {args.temperature})" if exploration else "")
          + f", {output_tokens} output tokens assumed; checkpoint prices")
    print("  w_q   $/1k routes   most routed")
    for p in curve[::10]:
        top = max(p.shares, key=p.shares.get)
        print(f"  {p.w_q:.1f}   {p.dollars_per_1k:11.4f}   {top} {p.shares[top]:.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"budget_per_1k": args.budget, "mode": args.mode,
                       "exploration": vars(exploration) if exploration else None,
                       "output_tokens": output_tokens, "prompts": len(prompts), "pick": vars(pick) if pick else None,
                       "scan": [vars(p) for p in curve]}, f, indent=2)
    if pick is None:
        print(f"\nno preference fits ${args.budget:g} per 1,000 routes: the cheapest routing (w_q = 0) spends "
              f"${curve[0].dollars_per_1k:.4f}")
        return 1
    print(f"\npreference: [{pick.w_q:.2f}, {1 - pick.w_q:.2f}]  spends ${pick.dollars_per_1k:.4f} per 1,000 routes "
          f"(budget ${args.budget:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
