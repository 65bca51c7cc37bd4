"""`barp route CHECKPOINT [PROMPT ...]`: route prompts with a trained checkpoint, no cluster, no Serve.

For a first look at what a checkpoint does, and for routing a file of prompts offline (a batch job,
a cost estimate before going live). Prompts come from the arguments, else one per line on stdin, or
with `--jsonl` as records `{"prompt": ..., "preference": ...}` (preference optional). Greedy: the
policy's most probable model, as `mode: greedy` over HTTP.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Iterable

import numpy as np

PROG = "barp route"


class InputError(ValueError):
    """Bad input, reported in one line naming what is wrong."""


def parse_preference(text: str) -> list[float] | float:
    """'0.8,0.2' (a pair) or '0.8' (a knob k meaning (k, 1 - k)); checked later by `route_preferences`."""
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--preference: expected WQ,WC or one knob K, got {text!r}") from None
    return parts[0] if len(parts) == 1 else parts


def prompt_records(lines: Iterable[str], jsonl: bool) -> list[tuple[int, dict]]:
    """(line number, {"prompt": ..., ...}) per non-blank line: a plain line is its own prompt, a JSONL
    line a record with a string "prompt". Blank lines are skipped, so a trailing newline is no prompt."""
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            records.append((n, {"prompt": line.rstrip("\n")}))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"line {n}: not JSON: {e.msg}") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise InputError(f"line {n}: prompt: expected a record with a string 'prompt'")
        records.append((n, record))
    return records


def read_requests(lines: Iterable[str], jsonl: bool, default) -> tuple[list[str], list]:
    """Prompts and one checked preference each (a record's own, else `default`)."""
    records = prompt_records(lines, jsonl)
    return ([r["prompt"] for _, r in records],
            [checked_preference(r.get("preference", default), f"line {n}: preference") for n, r in records])


def load_policy(checkpoint: str):
    """The checkpoint's RoutingPolicy, or an InputError naming what is wrong with it."""
    from barp_ray.policy import CheckpointError, RoutingPolicy

    logging.getLogger("ray._common.deprecation").setLevel(logging.ERROR)  # RLlib's notices to its own API's users, not ours
    try:
        return RoutingPolicy.load(checkpoint)
    except CheckpointError as e:
        raise InputError(str(e)) from None


def checked_preference(preference, field: str):
    """One [w_q, w_c] row, or an InputError naming `field`, where the bad one came from."""
    from barp_ray.policy import route_preferences

    try:
        return route_preferences(preference, 1)[0]
    except (TypeError, ValueError) as e:
        raise InputError(field + str(e).removeprefix("preference")) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint directory or storage URI (what `barp train` wrote)")
    p.add_argument("prompts", nargs="*", help="prompts to route (default: one per line on stdin)")
    p.add_argument("--preference", default="0.8,0.2", metavar="WQ,WC|K",
                   help="quality and cost weights on the simplex, or a knob K meaning (K, 1-K) (default: 0.8,0.2)")
    p.add_argument("--jsonl", action="store_true", help='stdin holds records {"prompt": ..., "preference": ...}')
    p.add_argument("--json", action="store_true", help="write one JSON record per prompt: model and probabilities")
    args = p.parse_intermixed_args(argv)  # `barp route CKPT --preference 0.5 "a prompt"` as well as after
    try:
        default = checked_preference(parse_preference(args.preference), "--preference")
        if args.prompts:
            prompts, preferences = list(args.prompts), [default] * len(args.prompts)
        else:
            prompts, preferences = read_requests(sys.stdin, args.jsonl, default)
        return _route(args.checkpoint, prompts, preferences, args.json)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _route(checkpoint: str, prompts: list[str], preferences: list, as_json: bool) -> int:
    """`preferences`: checked [w_q, w_c] rows, one per prompt (bad input is refused before a model loads)."""
    policy = load_policy(checkpoint)
    if not prompts:
        return 0
    probs = policy.probabilities(policy.observe(prompts), np.asarray(preferences, dtype=np.float32))
    for row in probs:
        model = policy.models[int(row.argmax())]
        if as_json:
            print(json.dumps({"model": model, "probabilities": {m: round(float(q), 6) for m, q in zip(policy.models, row)}}))
        else:
            print(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
