"""Does routing load stall a streaming chat completion? Chunk gaps with and without 32 routing clients.

    python bench/chat_stream_under_load.py [--topology colocated|split] [--out docs/results/chat_stream]

In the colocated topology (the default) the HTTP ingress that passes a chat stream's chunks on is
also the replica that computes routes, so a forward that held its event loop would hold every
stream's next chunk too. A local OpenAI-compatible upstream (`tests/openai_upstream.py`, a real
HTTP server) streams 100 chunks 0.1 s apart; one client reads them through `/v1/chat/completions`
(`barp-auto`), first alone, then while 32 closed-loop clients route. Printed and written: the
gaps between chunks as the client sees them (p50, p99, max), and the routes/s beside them.
One ingress replica (min = max = 1), the shipped serving mode (`serve/ray_env.py`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from load_test import chat_service, closed_loop, percentile, shipped_args  # noqa: E402
from serve.ray_env import HIGH_THROUGHPUT  # noqa: E402

NOMINAL_GAP_S = 0.1  # the upstream's pace ("upstream-slow")


async def stream_gaps(url: str) -> list[float]:
    """Seconds between consecutive chunks of one streamed completion, as the client reads them."""
    import aiohttp

    body = {"model": "barp-auto", "stream": True, "messages": [{"role": "user", "content": "upstream-slow please"}]}
    arrivals: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.post(url, json=body) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                    arrivals.append(time.perf_counter())
    return [b - a for a, b in zip(arrivals, arrivals[1:])]


def summary(gaps: list[float]) -> dict:
    return {"chunks": len(gaps) + 1, "gap_p50_ms": 1000 * percentile(gaps, 50), "gap_p99_ms": 1000 * percentile(gaps, 99),
            "gap_max_ms": 1000 * max(gaps)}


async def under_load(chat_url: str, route_url: str, prompts: list[str]) -> tuple[list[float], dict]:
    load = asyncio.ensure_future(closed_loop(route_url, prompts, 32, 14.0, 10**9))
    await asyncio.sleep(2.0)  # the load is running before the stream starts
    gaps = await stream_gaps(chat_url)
    return gaps, await load


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--topology", choices=["colocated", "split"], default=shipped_args()["topology"])
    p.add_argument("--checkpoint", default="checkpoints/barp-default")
    p.add_argument("--out", default="bench/out/chat_stream")
    args = p.parse_args()
    os.environ.update(HIGH_THROUGHPUT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from barp_ray.config import load_config
    from barp_ray.data.prepare import split_tables
    from openai_upstream import Upstream

    prompts = [str(x) for x in split_tables(load_config(None).data)[1].prompts]
    upstream = Upstream()
    base, stop = chat_service(args.checkpoint, upstream.base_url, args.topology)
    asyncio.run(closed_loop(f"{base}/v1/route", prompts, 8, 3, 10_000))  # warm-up
    alone = asyncio.run(stream_gaps(f"{base}/v1/chat/completions"))
    loaded, routes = asyncio.run(under_load(f"{base}/v1/chat/completions", f"{base}/v1/route", prompts))
    stop()
    upstream.close()

    results = {"topology": args.topology, "nominal_gap_ms": 1000 * NOMINAL_GAP_S,
               "alone": summary(alone), "with_32_routing_clients": {**summary(loaded), "routes": routes},
               "gaps_s": {"alone": alone, "with_32_routing_clients": loaded}}
    print(f"\n| {args.topology} | chunk gap p50 | p99 | max | routes/s |\n|---|---|---|---|---|")
    for name, gaps, rps in (("stream alone", alone, "-"), ("with 32 routing clients", loaded, f"{routes['routes_per_s']:.0f}")):
        s = summary(gaps)
        print(f"| {name} | {s['gap_p50_ms']:.0f} ms | {s['gap_p99_ms']:.0f} ms | {s['gap_max_ms']:.0f} ms | {rps} |")
    (out / f"chat_stream_{args.topology}.json").write_text(json.dumps(results, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([1000 * g for g in alone], ".", label="stream alone")
    ax.plot([1000 * g for g in loaded], ".", label="with 32 routing clients")
    ax.axhline(1000 * NOMINAL_GAP_S, color="grey", lw=0.8, ls="--", label="upstream's pace")
    ax.set_xlabel("chunk")
    ax.set_ylabel("gap to the previous chunk (ms)")
    ax.set_title(f"chat stream through the ingress ({args.topology} topology)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"chat_stream_{args.topology}.png", dpi=120)
    print(f"wrote {out}/chat_stream_{args.topology}.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
