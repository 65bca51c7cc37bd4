"""Sustained accepted-feedback writes per second: SQLite, PostgreSQL and the old JSONL log, one run.

    python bench/feedback_writes.py [--seconds 3] [--rounds 5] [--out docs/results/feedback_writes]

Each write is what one accepted feedback costs the service's feedback replica: the routing
decision recorded, then the feedback joined to it and committed durably (fsynced) before the 2xx
would go out. One writer thread, as in the service (one store replica, calls serialised).

- sqlite: `FeedbackStore` on a file (WAL; decision commit not fsynced, feedback commit fsynced).
- postgresql: `FeedbackStore` on a real PostgreSQL 16 started by `pgserver` on this machine
  (unix socket; advisory-locked durable commits, default synchronous_commit for feedback).
- jsonl: the store before SQLite, reduced to its writes: a decision line appended and flushed,
  a reward line appended, flushed and fsynced (its in-memory index replaced by a dict).

Backends take turns in blocks of `--seconds` for `--rounds` rounds, so a noisy neighbour on a
shared machine slows all of them alike; the table reports each backend's median block rate and
its ratio to SQLite's within the same rounds. Writes results.json and writes.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TAU = 0.01


def _decision(rid: str) -> dict:
    from serve.feedback_store import encode_vector

    return {"request_id": rid, "time": time.time(), "embedding": encode_vector(np.ones(384, dtype=np.float32)),
            "preference": [0.8, 0.2], "model": "m1", "behaviour_prob": 0.25, "mode": "explore", "policy_version": 0}


class JsonlLog:
    """The old log's write path: decisions appended (flushed), rewards appended and fsynced."""

    def __init__(self, directory: Path):
        self.decisions, self.index = open(directory / "decisions.jsonl", "ab"), {}
        self.rewards = open(directory / "rewards.jsonl", "ab")

    def record_decision(self, d: dict) -> None:
        self.index[d["request_id"]] = self.decisions.tell()
        self.decisions.write((json.dumps(d, separators=(",", ":")) + "\n").encode())
        self.decisions.flush()

    def record_feedback(self, rid: str, score: float, cost: float) -> None:
        if rid not in self.index:
            raise KeyError(rid)
        self.rewards.write((json.dumps({"request_id": rid, "score": score, "cost": cost}) + "\n").encode())
        self.rewards.flush()
        os.fsync(self.rewards.fileno())


def one_block(store, seconds: float) -> float:
    from serve.feedback_store import new_request_id

    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rid = new_request_id()
        store.record_decision(_decision(rid))
        store.record_feedback(rid, 1.0, 0.001)
        n += 1
    return n / (time.perf_counter() - start)


def run(args) -> dict:
    import pgserver

    from serve.feedback_db import PostgresDatabase
    from serve.feedback_store import FeedbackStore

    work = Path(tempfile.mkdtemp(prefix="feedback_writes_"))
    (work / "sqlite").mkdir()
    (work / "jsonl").mkdir()
    server = pgserver.get_server(work / "pg", cleanup_mode="stop")
    try:
        stores = {"sqlite": FeedbackStore(work / "sqlite", tau=TAU),
                  "postgresql": FeedbackStore(PostgresDatabase(server.get_uri(), "pgserver"), tau=TAU),
                  "jsonl": JsonlLog(work / "jsonl")}
        for s in stores.values():  # warm-up: connections, file creation, first pages
            one_block(s, 0.3)
        rates: dict[str, list[float]] = {k: [] for k in stores}
        for r in range(args.rounds):
            order = list(stores) if r % 2 == 0 else list(stores)[::-1]
            for name in order:
                rates[name].append(one_block(stores[name], args.seconds))
            print(f"round {r + 1}: " + "  ".join(f"{k} {rates[k][-1]:.0f}/s" for k in stores), flush=True)
    finally:
        server.cleanup()
    ratio = {k: float(np.median(np.asarray(v) / np.asarray(rates["sqlite"]))) for k, v in rates.items()}
    return {"settings": {"seconds": args.seconds, "rounds": args.rounds, "writer_threads": 1},
            "rates_per_round": rates, "median_per_s": {k: float(np.median(v)) for k, v in rates.items()},
            "ratio_to_sqlite_median": ratio, "machine_cpus": os.cpu_count()}


def table(result: dict) -> str:
    rows = ["| store | accepted feedback per second (median block) | range over blocks | vs SQLite (same rounds) |",
            "| --- | --- | --- | --- |"]
    for k, v in result["rates_per_round"].items():
        rows.append(f"| {k} | {result['median_per_s'][k]:.0f} | {min(v):.0f} - {max(v):.0f} | "
                    f"{result['ratio_to_sqlite_median'][k]:.2f}x |")
    return "\n".join(rows)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(result["rates_per_round"])
    for i, k in enumerate(names):
        v = result["rates_per_round"][k]
        ax.scatter([i] * len(v), v, color=f"C{i}", alpha=0.6)
        ax.hlines(result["median_per_s"][k], i - 0.25, i + 0.25, color=f"C{i}")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("accepted feedback / s (durable before 2xx)")
    ax.set_title("feedback store write throughput, one writer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="length of one timed block")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "feedback_writes"))
    args = p.parse_args()
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "writes.png")
    print(table(result))
    print(f"wrote {out}/results.json and writes.png")


if __name__ == "__main__":
    main()
