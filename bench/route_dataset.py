"""What routing a dataset through Ray Data costs against routing the same prompts in one process.

    python bench/route_dataset.py [--prompts 2048] [--pairs 3] [--out docs/results/route_dataset]

The same prompts (LLMRouter's train prompts from runs/llmrouter_train.parquet, else the synthetic
world's) are routed by checkpoints/barp-default two ways, alternately `--pairs` times:
- **in process**: `RoutingPolicy` at one torch thread, batches of 256 (what one actor at one CPU
  computes): encode, probabilities, argmax, and the token counts for the cost estimate;
- **route-dataset**: `barp route-dataset` (its `main`) on a local Ray with 2 CPUs, one actor at one CPU,
  from a Parquet file to a Parquet directory: Ray Data's read, the actor's start (loading MiniLM and the
  policy), routing, write, and the summary's read-back.
Rows per second of each, and their ratio within each pair (the machine is shared: only the ratio
carries from one run to the next). Writes results.json and throughput.png.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHECKPOINT = ROOT / "checkpoints" / "barp-default"


def _prompts(n: int) -> list[str]:
    import pyarrow.parquet as pq

    source = ROOT / "runs" / "llmrouter_train.parquet"
    if source.is_file():
        prompts = pq.read_table(source, columns=["prompt"]).column(0).to_pylist()
    else:
        from barp_ray.data.synthetic import synthetic_table

        prompts = list(synthetic_table(n).prompts)
    return [prompts[i % len(prompts)] for i in range(n)]


def in_process(prompts: list[str]) -> float:
    """Seconds to route `prompts` as one actor at one CPU does, the policy already loaded."""
    import torch

    from barp_ray.encoder import count_tokens
    from barp_ray.policy import RoutingPolicy

    torch.set_num_threads(1)
    policy = RoutingPolicy.load(CHECKPOINT)
    policy.observe(prompts[:8])  # the encoder loaded
    start = time.perf_counter()
    for i in range(0, len(prompts), 256):
        batch = prompts[i:i + 256]
        probs = policy.probabilities(policy.observe(batch), np.float32([0.8, 0.2]))
        probs.argmax(-1)
        count_tokens(batch, policy.encoder)
    return time.perf_counter() - start


def through_ray_data(source: Path, work: Path) -> float:
    """Seconds for `barp route-dataset` from the Parquet file to a new directory (Ray already up)."""
    from barp_ray.dataset_routing import main

    dest = work / "routed"
    shutil.rmtree(dest, ignore_errors=True)
    start = time.perf_counter()
    rc = main([str(CHECKPOINT), str(source), str(dest), "--preference", "0.8"])
    seconds = time.perf_counter() - start
    assert rc == 0, "route-dataset failed"
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=2048)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "route_dataset"))
    args = p.parse_args()
    if not CHECKPOINT.is_dir():
        print(f"error: {CHECKPOINT} missing; run `python -m barp_ray.train` first", file=sys.stderr)
        return 2
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    prompts = _prompts(args.prompts)
    work = Path(tempfile.mkdtemp(prefix="route-dataset-bench-"))
    source = work / "prompts.parquet"
    pq.write_table(pa.table({"id": list(range(len(prompts))), "prompt": prompts}), source)
    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    pairs = []
    try:
        for i in range(args.pairs):
            order = ("in_process", "ray_data") if i % 2 == 0 else ("ray_data", "in_process")
            seconds = {name: in_process(prompts) if name == "in_process" else through_ray_data(source, work) for name in order}
            pairs.append(seconds)
            print(f"pair {i + 1}: in process {seconds['in_process']:.1f} s, route-dataset {seconds['ray_data']:.1f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    n = len(prompts)
    ratios = [s["in_process"] / s["ray_data"] for s in pairs]
    rows = {"in_process": [n / s["in_process"] for s in pairs], "ray_data": [n / s["ray_data"] for s in pairs]}
    print(f"\n{n} prompts, {args.pairs} pairs (median, min-max)")
    print("  way                   rows/s")
    for name, label in (("in_process", "in process, 1 thread"), ("ray_data", "route-dataset, 1 actor")):
        print(f"  {label:<22} {np.median(rows[name]):7.1f}  ({min(rows[name]):.1f}-{max(rows[name]):.1f})")
    print(f"  route-dataset / in process: {np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({
        "prompts": n, "source": "runs/llmrouter_train.parquet" if (ROOT / "runs" / "llmrouter_train.parquet").is_file() else "synthetic",
        "checkpoint": "checkpoints/barp-default", "pairs": pairs, "rows_per_s": rows, "ratio": ratios,
        "ratio_median": float(np.median(ratios))}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for x, name in enumerate(("in_process", "ray_data")):
        ax.bar(x, np.median(rows[name]), color=("#888" if x == 0 else "#2a7"))
        ax.plot([x] * len(rows[name]), rows[name], "k.", ms=5)
    ax.set_xticks([0, 1], ["in process\n(1 thread)", "route-dataset\n(1 actor, 1 CPU)"])
    ax.set_ylabel("prompts routed per second")
    ax.set_title(f"{n} prompts; ratio {np.median(ratios):.2f} (median of {len(ratios)} pairs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
