"""What the router replica's embedding cache buys: route latency and throughput by the share of
prompts that repeat one already sent.

    python bench/embedding_cache.py [--prompts runs/llmrouter_train.parquet] [--out docs/results/embedding_cache]

The encoder is most of a route's CPU and is frozen, so a repeated prompt's h(x) can be kept
(`embedding_cache`, serve/embedding_cache.py). Traffic: each route's prompt is, with probability r, one
already sent (uniformly), else a new one from the file (LLMRouter's train prompts: a few hundred
characters to several KB). For r in 0, 0.5 and 0.9: one sequential client's latency (p50, p90) over
`--routes` routes, then 8 concurrent clients' routes/s over as many more (each prompt of the traffic
sent once). The same service with the cache off is measured first at r = 0
and 0.5, in the same run (one ingress replica, colocated, the shipped mode; a 2-core shared machine:
read the ratios within the run).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from load_test import chat_service, percentile  # noqa: E402
from serve.ray_env import HIGH_THROUGHPUT  # noqa: E402

SHARES = (0.0, 0.5, 0.9)


def traffic(pool: list[str], n: int, share: float, seed: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    fresh, sent = iter(rng.permutation(len(pool)).tolist()), []
    for _ in range(n):
        sent.append(sent[rng.integers(len(sent))] if sent and rng.random() < share else pool[next(fresh)])
    return sent


async def measure(base: str, prompts: list[str], latency_routes: int, clients: int) -> dict:
    """One client through the first `latency_routes` prompts, one after another (p50, p90); then
    `clients` concurrent clients through the rest, each prompt once (routes/s)."""
    import aiohttp

    body = {"preference": 0.7}
    async with aiohttp.ClientSession() as session:
        async def post(prompt: str) -> float:
            started = time.perf_counter()
            async with session.post(f"{base}/v1/route", json={"prompt": prompt, **body}) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            return time.perf_counter() - started

        lat = [await post(p) for p in prompts[:latency_routes]]
        queue = iter(prompts[latency_routes:])

        async def client() -> None:
            for prompt in queue:  # shared: each prompt is sent once, in order
                await post(prompt)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"p50_ms": 1000 * statistics.median(lat), "p90_ms": 1000 * percentile(lat, 90),
            "routes_per_s": (len(prompts) - latency_routes) / elapsed}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", default=str(ROOT / "runs" / "llmrouter_train.parquet"))
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "barp-default"))
    p.add_argument("--routes", type=int, default=400)
    p.add_argument("--out", default="bench/out/embedding_cache")
    args = p.parse_args()
    os.environ.update(HIGH_THROUGHPUT)
    from barp_ray.data.records import load_records
    from openai_upstream import Upstream

    pool = [str(x) for x in load_records(args.prompts).prompts]
    upstream = Upstream()
    rows = []
    for cache, shares in ((0, SHARES[:2]), (4096, SHARES)):
        base, stop = chat_service(args.checkpoint, upstream.base_url, embedding_cache=cache)
        try:
            asyncio.run(measure(base, traffic(pool, 60, 0.0, seed=99), 20, 4))  # warm-up
            for share in shares:
                sent = traffic(pool, 2 * args.routes, share, seed=int(share * 100))  # the same traffic with the cache on and off
                row = {"cache": cache, "repeat_share": share, **asyncio.run(measure(base, sent, args.routes, 8))}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            stop()
    upstream.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embedding_cache.json").write_text(json.dumps({"prompts": args.prompts, "routes": args.routes, "rows": rows}, indent=1))
    lines = ["| embedding_cache | repeated prompts | one client p50 | p90 | 8 clients: routes/s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['cache']} | {r['repeat_share']:.0%} | {r['p50_ms']:.1f} ms | {r['p90_ms']:.1f} ms | {r['routes_per_s']:.1f} |"
              for r in rows]
    print("\n".join(lines))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for cache, style in ((0, "o--"), (4096, "s-")):
        mine = [r for r in rows if r["cache"] == cache]
        x = [r["repeat_share"] for r in mine]
        ax[0].plot(x, [r["p50_ms"] for r in mine], style, label=f"embedding_cache {cache}")
        ax[1].plot(x, [r["routes_per_s"] for r in mine], style, label=f"embedding_cache {cache}")
    ax[0].set(xlabel="share of repeated prompts", ylabel="one client p50 (ms)")
    ax[1].set(xlabel="share of repeated prompts", ylabel="8 clients: routes/s")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(out / "embedding_cache.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
