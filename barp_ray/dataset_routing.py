"""`barp route-dataset CHECKPOINT SOURCE DEST`: route a whole dataset of prompts with Ray Data.

`barp route` answers a file on one machine; a corpus (last month's traffic, a batch-inference job's
inputs, a spend forecast over millions of prompts) wants the cluster. This reads Parquet or JSONL
(a path or storage URI, a file or a directory) with Ray Data, routes it in a pool of actors that
each load MiniLM and the policy once, and writes Parquet to DEST: every input column (the
preference column, if one is named, becomes `preference`: the [w_q, w_c] pair the row was routed at), then
`model` (the policy's greedy choice, as `mode: greedy` over HTTP), `probability` (its share of
the policy's distribution), `estimated_cost` (dollars, the checkpoint's prices with an assumed
answer length, as `barp calibrate` prices) and `error`. A row that cannot be routed (no prompt, a
bad preference) is written with `model` null and the reason in `error`, so one bad row neither
stops a long job nor vanishes; the command counts them. From Python: `route_dataset(ds, ...)`.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np

from barp_ray.policy import stated_answer_tokens
from barp_ray.route_cli import InputError, checked_preference, load_policy, parse_preference

PROG = "barp route-dataset"
FORMATS = ("parquet", "jsonl")
OUTPUT_COLUMNS = ("preference", "model", "probability", "estimated_cost", "error")


@dataclass(frozen=True)
class RoutingRequest:
    """What every actor needs to route a batch: picklable, checked on the driver before any actor starts."""
    checkpoint: str
    preference: tuple[float, float]  # rows without their own
    prompt_column: str = "prompt"
    preference_column: str | None = None
    output_tokens: int = 256


class BatchRouter:
    """A Ray Data actor: loads the policy and encoder once, then routes batch after batch."""

    def __init__(self, request: RoutingRequest):
        self.request = request
        self.policy = load_policy(request.checkpoint)
        self.prices = self.policy.meta.get("prices") or {}
        self.priced = all(self.prices.get(m) for m in self.policy.models)  # estimated_cost needs every model's price

    def __call__(self, batch: "pd.DataFrame") -> "pa.Table":
        import pyarrow as pa

        from barp_ray.data.llmrouter import route_costs
        from barp_ray.encoder import count_tokens

        req, policy = self.request, self.policy
        prompts = batch[req.prompt_column].tolist()
        raw = batch[req.preference_column].tolist() if req.preference_column else [None] * len(prompts)
        errors: list[str | None] = [None] * len(prompts)
        rows = np.zeros((len(prompts), 2), dtype=np.float32)
        for i, (prompt, pref) in enumerate(zip(prompts, raw)):
            if not isinstance(prompt, str) or not prompt.strip():
                errors[i] = f"{req.prompt_column}: expected a non-empty string, got {prompt!r:.40}"
                continue
            try:
                rows[i] = req.preference if _missing(pref) else checked_preference(_plain(pref), req.preference_column)
            except InputError as e:
                errors[i] = str(e)
        ok = np.flatnonzero([e is None for e in errors])
        model = np.full(len(prompts), None, dtype=object)
        probability = np.full(len(prompts), np.nan)
        cost = np.full(len(prompts), np.nan)
        if len(ok):
            chosen_prompts = [prompts[i] for i in ok]
            probs = policy.probabilities(policy.observe(chosen_prompts), rows[ok])
            choice = probs.argmax(-1)
            model[ok] = [policy.models[c] for c in choice]
            probability[ok] = probs[np.arange(len(ok)), choice]
            if self.priced:
                per_model = route_costs(self.prices, policy.models, count_tokens(chosen_prompts, policy.encoder), req.output_tokens)
                cost[ok] = per_model[np.arange(len(ok)), choice]
        # The source's preference column gives way to the pair each row was routed at: JSONL may mix knobs
        # and pairs in one column, which no Parquet column holds. Typed columns: a batch whose rows were
        # all refused must not write a null-typed `model`.
        kept = batch.drop(columns=[req.preference_column] if req.preference_column else [])
        # A refused prompt that was not a string (JSONL: a number, a list) is kept as its JSON text.
        kept[req.prompt_column] = [p if p is None or isinstance(p, str) else json.dumps(_plain(p), default=str) for p in prompts]
        try:
            out = pa.Table.from_pandas(kept, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # e.g. a JSONL column mixing numbers and text
            raise InputError(f"source: a column Parquet cannot hold: {e}") from None
        used = [None if e else [float(x) for x in r] for e, r in zip(errors, rows)]
        for name, values, kind in (("preference", used, pa.list_(pa.float32())), ("model", model, pa.string()),
                                   ("probability", probability, pa.float64()), ("estimated_cost", cost, pa.float64()),
                                   ("error", errors, pa.string())):
            out = out.append_column(name, pa.array(list(values), type=kind, from_pandas=True))
        return out


def _missing(value) -> bool:
    """A null cell: None, NaN or pandas' NA (a null list in Parquet arrives as NA)."""
    import pandas as pd

    return value is None or (np.ndim(value) == 0 and not isinstance(value, (str, dict)) and bool(pd.isna(value)))


def _plain(value):
    """A Parquet list cell arrives as a numpy array; `route_preferences` reads lists and numbers."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def route_dataset(ds: "ray.data.Dataset", request: RoutingRequest, concurrency: int | tuple[int, int] = 1,
                  batch_size: int = 256, num_cpus: float = 1.0) -> "ray.data.Dataset":
    """The dataset with the routing columns added (lazy, like any Ray Data transform)."""
    missing = [c for c in (request.prompt_column, request.preference_column) if c and c not in ds.columns()]
    if missing:
        raise InputError(f"--prompt-column/--preference-column: {missing} not among the source's columns {ds.columns()}")
    clash = [c for c in OUTPUT_COLUMNS if c in ds.columns() and c != request.preference_column]
    if clash:
        raise InputError(f"source: already has column(s) {clash}, which routing writes; rename them first")
    import ray.data

    pool = ray.data.ActorPoolStrategy(size=concurrency) if isinstance(concurrency, int) else \
        ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    return ds.map_batches(BatchRouter, fn_constructor_args=(request,), batch_size=batch_size, batch_format="pandas",
                          compute=pool, num_cpus=num_cpus)


def read_source(source: str, fmt: str | None) -> "ray.data.Dataset":
    import ray.data

    fmt = fmt or ("jsonl" if source.rstrip("/").endswith((".json", ".jsonl")) else "parquet")
    try:
        return ray.data.read_json(source, lines=True) if fmt == "jsonl" else ray.data.read_parquet(source)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise InputError(f"source: cannot read {source} as {fmt}: {str(e).splitlines()[0]}") from None


def check_destination(dest: str) -> None:
    """Refuse a DEST that holds files: Ray Data adds its files beside them, and two runs would mix."""
    import pyarrow.fs as pafs

    from barp_ray.storage import filesystem

    fs, path = filesystem(dest)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise InputError(f"dest: {dest} is a file; give a directory")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path)):
        raise InputError(f"dest: {dest} is not empty; give a new directory")


def remove_partial(dest: str) -> None:
    """What a failed run wrote: DEST was new or empty (`check_destination`), so half a result never
    passes for a whole one."""
    from barp_ray.storage import filesystem

    fs, path = filesystem(dest)
    fs.delete_dir_contents(path, missing_dir_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint directory or storage URI (on a cluster: one every node can read)")
    p.add_argument("source", help="Parquet or JSONL prompts: a file or directory, a path or storage URI")
    p.add_argument("dest", help="a new directory or storage URI for the routed Parquet files")
    p.add_argument("--format", choices=FORMATS, help="the source's format (default: jsonl for .json/.jsonl names, else parquet)")
    p.add_argument("--prompt-column", default="prompt", help="the column holding prompts (default: prompt)")
    p.add_argument("--preference-column", help="a column of per-row preferences: a knob K or a [w_q, w_c] pair "
                                               "(null: --preference)")
    p.add_argument("--preference", default="0.8,0.2", metavar="WQ,WC|K", help="rows without their own (default: 0.8,0.2)")
    p.add_argument("--output-tokens", type=int, help="assumed answer length for estimated_cost "
                                                     "(default: the checkpoint's data.output_tokens if one number, else 256)")
    p.add_argument("--concurrency", type=int, default=1, help="routing actors (default: 1)")
    p.add_argument("--batch-size", type=int, default=256, help="prompts per batch an actor routes (default: 256)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs each actor reserves (default: 1)")
    p.add_argument("--address", help="the Ray cluster (default: RAY_ADDRESS, a running cluster, else a local one)")
    args = p.parse_args(argv)
    try:
        return _route_dataset(args)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _route_dataset(args: argparse.Namespace) -> int:
    for name in ("concurrency", "batch_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if not args.num_cpus > 0:
        raise InputError(f"--num-cpus: must be positive, got {args.num_cpus}")
    if args.output_tokens is not None and args.output_tokens < 0:
        raise InputError(f"--output-tokens: must be >= 0, got {args.output_tokens}")
    preference = tuple(float(x) for x in checked_preference(parse_preference(args.preference), "--preference"))
    policy = load_policy(args.checkpoint)  # a bad checkpoint fails here in one line, not in every actor
    output_tokens = args.output_tokens
    if output_tokens is None:
        output_tokens = stated_answer_tokens(policy.meta)
        output_tokens = 256 if output_tokens is None else output_tokens
    check_destination(args.dest)
    request = RoutingRequest(checkpoint=args.checkpoint, preference=preference, prompt_column=args.prompt_column,
                             preference_column=args.preference_column, output_tokens=output_tokens)

    import ray

    if not ray.is_initialized():
        ray.init(address=args.address, logging_level="WARNING")
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if args.concurrency * args.num_cpus > cpus - 1:
        # Actors that hold every CPU leave none for Ray Data's read and write tasks: the job would hang.
        raise InputError(f"--concurrency/--num-cpus: {args.concurrency} actor(s) x {args.num_cpus:g} CPU leave no CPU of "
                         f"the cluster's {cpus:g} for reading and writing; at most {max(0.0, cpus - 1):g} CPUs for actors")
    ds = route_dataset(read_source(args.source, args.format), request, args.concurrency, args.batch_size, args.num_cpus)
    try:
        ds.write_parquet(args.dest)
    except Exception as e:  # noqa: BLE001 - Ray wraps a worker's failure; root_cause says what it was
        remove_partial(args.dest)
        raise InputError(f"routing stopped, nothing kept in dest: {root_cause(e)}") from None
    summary = ray.data.read_parquet(args.dest, columns=["model", "estimated_cost"]).to_pandas()
    print(routing_summary(summary, policy.models, args.dest))
    return 0


def root_cause(error: BaseException) -> str:
    """What failed in the actor, in one line. Ray Data hands the driver a RayTaskError wrapping a
    UserCodeException; the actor's own exception survives only as the first `Name: message` line of
    the remote traceback in its text."""
    found = re.search(r"^([\w.]*(?:Error|Exception)): (.+)$", str(error), re.MULTILINE)
    if found is None:
        return f"{type(error).__name__}: {str(error).strip()[:200]}"
    name, message = found.groups()
    return message if name.endswith(".InputError") else f"{name.rsplit('.', 1)[-1]}: {message}"


def routing_summary(routed: "pd.DataFrame", models, dest: str) -> str:
    """Rows routed per model, the refused rows, and the estimated spend: what the job did at a glance."""
    counts = Counter(m for m in routed["model"] if isinstance(m, str))
    refused = len(routed) - sum(counts.values())
    lines = [f"routed {sum(counts.values())} of {len(routed)} rows to {dest}"
             + (f"; {refused} refused (model null, reason in the error column)" if refused else "")]
    for m in models:
        if counts[m]:
            lines.append(f"  {m:<32} {counts[m]:>9}  {counts[m] / max(1, sum(counts.values())):6.1%}")
    spend = routed["estimated_cost"].dropna()
    if len(spend):
        lines.append(f"estimated spend ${spend.sum():.4f} (${1000 * spend.mean():.4f} per 1,000 routes)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
