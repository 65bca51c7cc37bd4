"""Bounded soak test on loopback: steady routing + feedback for N minutes, memory of every process.

    python bench/soak.py [--minutes 10] [--rps 20] [--out bench/out/soak]

Routes a steady stream of prompts (sample mode), posts each one's simulated outcome as feedback
(the synthetic world's true score and cost), lets the continuous trainer update as it goes, and
samples the resident memory of every Ray/Serve process every 10 s. At the end it checks that
every feedback answered 2xx is in the reward log exactly once, and reports errors and memory
growth (after a warm-up) per process. Traffic goes to 127.0.0.1 only and stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from serve.ray_env import serve_as_shipped  # noqa: E402

serve_as_shipped()  # Ray, started below, serves in the project's mode (HAProxy ingress)
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402


def ray_processes(since: float) -> dict[int, str]:
    """Ray processes started by this run (other Ray sessions on the machine are left out)."""
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "create_time"]):
        if (p.info.get("create_time") or 0) < since:
            continue
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd:
            name = cmd.split()[0] if cmd.startswith("ray::") else ("raylet" if "raylet" in cmd else "gcs_server")
            out[p.info["pid"]] = name
    return out


def rss_mb(pids: dict[int, str]) -> dict[str, float]:
    import psutil

    out = {}
    for pid, name in pids.items():
        try:
            out[f"{name}[{pid}]"] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


async def soak(base: str, token: str, table, seconds: float, rps: float, stats: dict) -> None:
    import aiohttp

    models = list(table.models)
    headers = {"authorization": f"Bearer {token}"}
    rng = np.random.default_rng(0)
    end = time.perf_counter() + seconds

    async def one(session, i):
        try:
            async with session.post(f"{base}/v1/route", json={"prompt": str(table.prompts[i]), "preference": 0.8,
                                                                "mode": "sample"}) as r:
                body = await r.json(content_type=None)
                stats["route_status"][r.status] = stats["route_status"].get(r.status, 0) + 1
                if r.status != 200:
                    return
            a = models.index(body["model"])
            fb = {"request_id": body["request_id"], "score": float(table.scores[i, a]), "cost": float(table.costs[i, a])}
            async with session.post(f"{base}/v1/feedback", json=fb, headers=headers) as r:
                await r.read()
                stats["feedback_status"][r.status] = stats["feedback_status"].get(r.status, 0) + 1
                if r.status == 200:
                    stats["accepted"].append(body["request_id"])
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            stats["client_errors"].append(type(e).__name__)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = set()
        k = 0
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            tasks.add(asyncio.create_task(one(session, int(rng.integers(table.n)))))
            tasks = {t for t in tasks if not t.done()}
            k += 1
            await asyncio.sleep(max(0.0, 1.0 / rps - (time.perf_counter() - t0)))
        await asyncio.gather(*tasks)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rps", type=float, default=20)
    p.add_argument("--out", default="bench/out/soak")
    p.add_argument("--checkpoint")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import ray
    from ray import serve

    from barp_ray.config import apply_overrides, load_config
    from barp_ray.data.prepare import split_tables
    from serve.app import app_builder
    from serve.feedback_store import RewardReader

    cfg = load_config(None)
    table = split_tables(cfg.data)[0]
    work = Path(tempfile.mkdtemp(prefix="barp-soak-"))
    token = os.urandom(16).hex()
    (work / "token").write_text(token)
    started = time.time() - 1
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", object_store_memory=300 * 1024**2)
    ckpt = args.checkpoint
    if ckpt is None:
        from barp_ray.training.run import train

        ckpt = train(apply_overrides(cfg, ["training.iterations=30", f"output.checkpoint_dir={work / 'ckpt'}"]),
                     progress=False).checkpoint
    port = 8000 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_builder({
        "checkpoint": ckpt, "log_dir": str(work / "log"), "auth": {"token_file": str(work / "token")},
        "router_autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
        "trainer": {"state_dir": str(work / "trainer"), "enabled": True},
    }), name="barp", route_prefix="/")

    stats = {"route_status": {}, "feedback_status": {}, "accepted": [], "client_errors": []}
    samples: list[dict] = []
    seconds = args.minutes * 60
    t_start = time.time()

    async def run():
        load = asyncio.create_task(soak(f"http://127.0.0.1:{port}", token, table, seconds, args.rps, stats))
        while not load.done():
            samples.append({"t": time.time() - t_start, "rss_mb": rss_mb(ray_processes(started)),
                            "routes": sum(stats["route_status"].values())})
            print(f"t={samples[-1]['t']:.0f}s routes={samples[-1]['routes']} "
                  f"accepted={len(stats['accepted'])} total_rss={sum(samples[-1]['rss_mb'].values()):.0f}MB", flush=True)
            await asyncio.wait({load}, timeout=10)
        await load

    asyncio.run(run())
    time.sleep(3)
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/stats", headers={"authorization": f"Bearer {token}"})
    service_stats = json.loads(urllib.request.urlopen(req).read())
    serve.shutdown()
    ray.shutdown()

    ids = RewardReader(work / "log").request_ids()
    accepted = stats["accepted"]
    warm = [s for s in samples if s["t"] >= 60] or samples
    growth = {}
    for name in warm[0]["rss_mb"]:
        series = [s["rss_mb"][name] for s in warm if name in s["rss_mb"]]
        if len(series) >= 2:
            growth[name] = {"start_mb": series[0], "end_mb": series[-1], "growth_mb": series[-1] - series[0],
                            "growth_pct": 100 * (series[-1] - series[0]) / series[0]}
    result = {
        "minutes": args.minutes, "target_rps": args.rps,
        "routes": sum(stats["route_status"].values()), "route_status": stats["route_status"],
        "feedback_status": stats["feedback_status"], "client_errors": len(stats["client_errors"]),
        "accepted_feedback": len(accepted), "rewards_in_log": len(ids), "unique_in_log": len(set(ids)),
        "accepted_missing_from_log": len(set(accepted) - set(ids)),
        "trainer": service_stats.get("trainer"), "memory_growth_after_1min": growth, "samples": samples,
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2, default=str))
    print("\n| process | RSS at 1 min (MB) | RSS at end (MB) | growth |")
    print("|---|---|---|---|")
    for name, g in sorted(growth.items()):
        print(f"| {name} | {g['start_mb']:.0f} | {g['end_mb']:.0f} | {g['growth_mb']:+.0f} MB ({g['growth_pct']:+.1f}%) |")
    print(f"\nroutes {result['routes']} {stats['route_status']}, feedback {stats['feedback_status']}, client errors "
          f"{result['client_errors']}; accepted {len(accepted)}, in log {len(ids)} (unique {len(set(ids))}), "
          f"missing {result['accepted_missing_from_log']}; trainer {result['trainer']}")
    print(f"wrote {out / 'soak.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
