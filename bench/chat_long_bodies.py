"""What a long chat body costs the service: routing overhead by body size, and the stall it puts on
other routes in the same ingress replica.

    python bench/chat_long_bodies.py [--out docs/results/chat_long_bodies]

A chat body goes to its provider whole (up to `limits.max_chat_body_bytes`, 8 MiB); the ingress reads
it, validates it, counts its tokens (exactly up to 64 K characters, from samples above), cuts the last
user message for the router and forwards the rest. For each size a `barp-auto` chat completion (JSON)
goes through the service, the same body to a named model through it (forwarded, not routed), and, as
the baseline, straight to the upstream (a local OpenAI-compatible server, `tests/openai_upstream.py`);
the difference is the service's overhead. Then
the same long request is sent in a loop while one client routes short prompts on `/v1/route`: the
route latencies beside it (p50, p99, max) say how long a long body holds the replica's event loop.
One ingress replica (colocated, the shipped mode); the ratio to the baseline is taken within one run.
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

SIZES_KB = (1, 64, 512, 2048, 7680)
CLAUSE = "Clause {i}: the lessee keeps the premises in good repair and returns them as found. "


def document(kb: int) -> str:
    text, i = [], 0
    while sum(map(len, text)) < kb * 1024:
        text.append(CLAUSE.format(i=i))
        i += 1
    return "".join(text)[: kb * 1024] + "\nWhich clause covers repairs?"


async def timed_post(session, url: str, body: dict) -> float:
    started = time.perf_counter()
    async with session.post(url, json=body) as resp:
        await resp.read()
        assert resp.status == 200, (resp.status, (await resp.text())[:300])
    return time.perf_counter() - started


async def one_size(base: str, upstream_url: str, kb: int, repeats: int) -> dict:
    import aiohttp

    text = document(kb)
    via = {"model": "barp-auto", "messages": [{"role": "user", "content": text}], "barp": {"preference": 0.7}}
    direct = {"model": "chat-8b", "messages": [{"role": "user", "content": text}]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        service, named, baseline = [], [], []
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits all alike
            service.append(await timed_post(session, f"{base}/v1/chat/completions", via))
            named.append(await timed_post(session, f"{base}/v1/chat/completions", direct))  # forwarded, not routed
            baseline.append(await timed_post(session, f"{upstream_url}/chat/completions", direct))
        routes, stop = [], asyncio.Event()

        async def route_loop():
            body = {"prompt": "Sum the first ten primes.", "preference": 0.7}
            while not stop.is_set():
                routes.append(await timed_post(session, f"{base}/v1/route", body))

        async def long_loop():
            for _ in range(repeats):
                await timed_post(session, f"{base}/v1/chat/completions", via)
            stop.set()

        await asyncio.gather(route_loop(), long_loop())
    return {"kb": kb, "chars": len(text), "service_ms": 1000 * statistics.median(service),
            "named_ms": 1000 * statistics.median(named),
            "direct_ms": 1000 * statistics.median(baseline),
            "overhead_ms": 1000 * (statistics.median(service) - statistics.median(baseline)),
            "routes_beside": len(routes), "route_p50_ms": 1000 * percentile(routes, 50),
            "route_p99_ms": 1000 * percentile(routes, 99), "route_max_ms": 1000 * max(routes)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="checkpoints/barp-default")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="bench/out/chat_long_bodies")
    args = p.parse_args()
    os.environ.update(HIGH_THROUGHPUT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from openai_upstream import Upstream

    upstream = Upstream()
    base, stop = chat_service(args.checkpoint, upstream.base_url, "colocated", "barp-long-")
    asyncio.run(one_size(base, upstream.base_url, 1, 2))  # warm-up
    rows = [asyncio.run(one_size(base, upstream.base_url, kb, args.repeats)) for kb in SIZES_KB]
    stop()
    upstream.close()

    print("\n| body | barp-auto through the service | a named model through it | straight to the upstream | barp-auto's "
          "overhead | a short route beside barp-auto: p50 | p99 | max |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['kb']:,} KB | {r['service_ms']:.0f} ms | {r['named_ms']:.0f} ms | {r['direct_ms']:.0f} ms | "
              f"{r['overhead_ms']:.0f} ms | {r['route_p50_ms']:.1f} ms | {r['route_p99_ms']:.0f} ms | {r['route_max_ms']:.0f} ms |")
    (out / "chat_long_bodies.json").write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    kb = [r["kb"] for r in rows]
    ax.loglog(kb, [r["service_ms"] for r in rows], "o-", label="chat through the service")
    ax.loglog(kb, [r["named_ms"] for r in rows], "d-", label="a named model through the service (no routing)")
    ax.loglog(kb, [r["direct_ms"] for r in rows], "s-", label="the same body straight to the upstream")
    ax.loglog(kb, [r["route_max_ms"] for r in rows], "^--", label="slowest short route beside it")
    ax.set_xlabel("chat body (KB)")
    ax.set_ylabel("ms (median of repeats; route: max)")
    ax.set_title("long chat bodies: overhead and the stall beside them (one ingress replica)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "chat_long_bodies.png", dpi=120)
    print(f"wrote {out}/chat_long_bodies.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
