"""What a retention pass costs the service: its speed, and the feedback writes that wait on it.

    python bench/retention.py [--rewards 100000] [--batch 50000] [--out docs/results/retention]

For each backend (SQLite; PostgreSQL 16 from `pgserver`) a store is filled with `--rewards` joined
rewards whose bodies are the service's (a 384-float embedding and the decision's fields), the
trainer's offset is committed past all of them, and then:
- **without a pass**: one writer records feedback as the service does (a decision, then the
  feedback joined and committed durably) for `--seconds`; each write's latency is kept;
- **during a pass**: the same writer runs while `FeedbackStore.prune` keeps the newest tenth and
  archives the rest to Parquet, `--batch` rewards a file, as the feedback log's replica would.
The table gives the pass's rewards per second, the archive's bytes per reward, and the writes'
p50 / p99 / max latency without and during the pass (each run's ratio within the same run: the
machine is shared). Writes results.json and latency.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TAU = 0.01


def _body(rid: str, now: float, rng) -> str:
    from serve.feedback_store import encode_vector

    return json.dumps({"request_id": rid, "time": now, "embedding": encode_vector(rng.normal(size=384).astype(np.float32)),
                       "preference": [0.8, 0.2], "model": "m1", "behaviour_prob": 0.25, "mode": "explore", "policy_version": 3,
                       "models": ["m0", "m1", "m2", "m3"], "prices": None, "candidates": None}, separators=(",", ":"))


def _fill(store, n: int, rng) -> None:
    from serve.feedback_store import new_request_id

    now = time.time()
    for start in range(0, n, 5000):
        rows = []
        for _ in range(min(5000, n - start)):
            rid = new_request_id(now)
            rows.append((rid, now, 0.5, 0.001, 0.3, _body(rid, now, rng)))
        with store.db.transaction(durable=False):
            store.db.executemany("INSERT INTO rewards (request_id, time, score, cost, reward, defaulted, body) "
                                 "VALUES (?, ?, ?, ?, ?, 0, ?)", rows)


def _writes(store, stop: threading.Event, seconds: float, rng) -> list[float]:
    """One feedback writer (decision + durable feedback), until `stop` or `seconds`; each write's seconds."""
    from serve.feedback_store import new_request_id

    out, end = [], time.time() + seconds
    while not stop.is_set() and time.time() < end:
        rid = new_request_id()
        t0 = time.perf_counter()
        store.record_decision(json.loads(_body(rid, time.time(), rng)))
        store.record_feedback(rid, 0.5, 0.001)
        out.append(time.perf_counter() - t0)
    return out


def _quantiles(x: list[float]) -> dict:
    a = np.asarray(x) * 1000
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 1)}


def run(backend: str, where, n: int, batch: int, seconds: float, tmp: Path) -> dict:
    from serve.feedback_archive import FeedbackArchive
    from serve.feedback_store import FeedbackStore, RewardReader

    rng = np.random.default_rng(0)
    store = FeedbackStore(where(), tau=TAU)
    _fill(store, n, rng)
    RewardReader(where()).commit_offset(store.counts()["last_id"])
    before = _writes(store, threading.Event(), seconds, rng)
    archive = FeedbackArchive(str(tmp / f"archive-{backend}"))
    pass_store = FeedbackStore(where(), tau=TAU)  # the feedback log's retention runs on its own thread and connection
    done, result = threading.Event(), {}

    def prune() -> None:
        t0 = time.perf_counter()
        result["pruned"] = pass_store.prune(keep=n // 10, max_age_s=None, trained_only=True, archive=archive, batch=batch)
        result["seconds"] = time.perf_counter() - t0
        done.set()

    worker = threading.Thread(target=prune)
    worker.start()
    during = _writes(store, done, 3600, rng)
    worker.join()
    size = sum(Path(p).stat().st_size for _, _, p in archive.parts())
    row = {"backend": backend, "rewards": n, "batch": batch, "pruned": result["pruned"], "files": len(archive.parts()),
           "pass_s": round(result["seconds"], 2), "pruned_per_s": round(result["pruned"] / result["seconds"]),
           "archive_bytes_per_reward": round(size / result["pruned"]),
           "writes_without": _quantiles(before), "writes_during": _quantiles(during)}
    row["p99_ratio"] = round(row["writes_during"]["p99_ms"] / row["writes_without"]["p99_ms"], 2)
    store.close()
    pass_store.close()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rewards", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=50_000)
    p.add_argument("--seconds", type=float, default=5.0, help="writes timed without a pass")
    p.add_argument("--out", default="docs/results/retention")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="barp-retention-") as tmp:
        tmp = Path(tmp)
        rows.append(run("sqlite", lambda: tmp / "sqlite", args.rewards, args.batch, args.seconds, tmp))
        import pgserver

        from serve.feedback_db import PostgresDatabase

        server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
        url = server.get_uri()
        rows.append(run("postgresql", lambda: PostgresDatabase(url, "bench"), args.rewards, args.batch, args.seconds, tmp))
        server.cleanup()
    print(f"{'backend':<11} {'pruned':>8} {'files':>5} {'pass s':>7} {'per s':>8} {'B/reward':>9} "
          f"{'writes p50 / p99 / max ms, without':>36} {'during':>22} {'p99 x':>6}")
    for r in rows:
        w, d = r["writes_without"], r["writes_during"]
        print(f"{r['backend']:<11} {r['pruned']:>8} {r['files']:>5} {r['pass_s']:>7} {r['pruned_per_s']:>8} "
              f"{r['archive_bytes_per_reward']:>9} {w['p50_ms']:>14} / {w['p99_ms']} / {w['max_ms']:>6} "
              f"{d['p50_ms']:>8} / {d['p99_ms']} / {d['max_ms']:>6} {r['p99_ratio']:>6}")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels, width = [r["backend"] for r in rows], 0.2
    x = np.arange(len(rows))
    for i, (phase, stat) in enumerate([("writes_without", "p50_ms"), ("writes_during", "p50_ms"),
                                       ("writes_without", "p99_ms"), ("writes_during", "p99_ms")]):
        ax.bar(x + (i - 1.5) * width, [r[phase][stat] for r in rows], width,
               label=f"{stat[:3]} {'during a pass' if phase == 'writes_during' else 'without'}")
    ax.set_xticks(x, labels)
    ax.set_ylabel("durable feedback write, ms")
    ax.set_title(f"Feedback writes during a retention pass ({args.batch:,} rewards a file)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    print(f"wrote {out / 'results.json'} and {out / 'latency.png'}")


if __name__ == "__main__":
    main()
