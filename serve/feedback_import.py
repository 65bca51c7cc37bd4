"""`barp import-feedback SOURCE [--config configs/serve.yaml]`: bring joined rewards into the
configured feedback store, from a JSONL feedback log (decisions.jsonl + rewards.jsonl, the store
before SQLite) or from a retention archive (`retention.archive`: Parquet files, a path or storage
URI), e.g. to move a store from one machine's SQLite to a cluster's PostgreSQL.

Rewards keep their file order, so the trainer reads them in the order they were accepted;
decisions that never got feedback become pending and meet the reward wait time like any other.
Re-running is safe: a request id already in the store is skipped, not duplicated. A torn final
line (a crash mid-write in the old log) is reported and skipped. Nothing else is written if a
line in the middle of a file is not JSON: the command names the file and line and stops.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from barp_ray.storage import is_uri

OLD_DECISIONS, OLD_REWARDS = "decisions.jsonl", "rewards.jsonl"


class ImportError_(ValueError):
    pass


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(records, torn final lines skipped); a bad line elsewhere raises naming it."""
    if not path.exists():
        return [], 0
    lines = path.read_bytes().split(b"\n")
    out, torn = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if all(not rest.strip() for rest in lines[i + 1:]):
                torn += 1  # the old log's crash mode: the last line cut short
                continue
            raise ImportError_(f"{path}: line {i + 1} is not JSON") from None
    return out, torn


def archived_rewards(uri: str) -> list[dict]:
    """An archive's rewards in id order, in the shape the JSONL log kept them (decision + outcome)."""
    from serve.feedback_archive import FeedbackArchive

    return [{**json.loads(body), "feedback_time": t, "score": q, "cost": c, "reward": r, "defaulted": bool(d)}
            for _, _, t, q, c, r, d, body in FeedbackArchive(uri).rows()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="barp import-feedback", description=__doc__.splitlines()[0])
    p.add_argument("old_log_dir", metavar="source",
                   help="directory holding decisions.jsonl and rewards.jsonl, or a retention archive (path or storage URI)")
    p.add_argument("--config", default="configs/serve.yaml", help="serve config naming the target store")
    p.add_argument("--set", action="append", default=[], help="override an app arg, e.g. feedback.database=postgresql")
    args = p.parse_args(argv)
    from serve.feedback_archive import ArchiveError
    from serve.feedback_db import DatabaseError, open_database
    from serve.feedback_store import FeedbackStore
    from serve.settings import SettingsError, settings_from_config

    old = Path(args.old_log_dir)
    try:
        if is_uri(args.old_log_dir) or (old.is_dir() and any(old.glob("rewards-*.parquet"))):
            rewards, decisions, torn_r, torn_d = archived_rewards(args.old_log_dir), [], 0, 0
        elif not (old / OLD_REWARDS).exists() and not (old / OLD_DECISIONS).exists():
            raise ImportError_(f"source: no {OLD_REWARDS} or {OLD_DECISIONS}, nor a retention archive's rewards-*.parquet, in {old}")
        else:
            rewards, torn_r = read_jsonl(old / OLD_REWARDS)
            decisions, torn_d = read_jsonl(old / OLD_DECISIONS)
        settings = settings_from_config(args.config, args.set)
        store = FeedbackStore(open_database(settings), tau=float("nan"))  # imported rewards come computed
        counts = store.import_records(rewards, decisions)
        store.close()
    except (ImportError_, ArchiveError, SettingsError, DatabaseError, OSError, KeyError) as e:
        print(f"barp import-feedback: error: {e}", file=sys.stderr)
        return 2
    print(f"imported {counts['rewards']} rewards and {counts['pending']} pending decisions; skipped "
          f"{counts['skipped']} already in the store and {torn_r + torn_d} torn final line(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
