"""`barp import-feedback OLD_LOG_DIR [--config configs/serve.yaml]`: move a JSONL feedback log
(decisions.jsonl + rewards.jsonl, the store before SQLite) into the configured feedback store.

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="barp import-feedback", description=__doc__.splitlines()[0])
    p.add_argument("old_log_dir", help="directory holding decisions.jsonl and rewards.jsonl")
    p.add_argument("--config", default="configs/serve.yaml", help="serve config naming the target store")
    p.add_argument("--set", action="append", default=[], help="override an app arg, e.g. feedback.database=postgresql")
    args = p.parse_args(argv)
    from serve.feedback_db import DatabaseError, open_database
    from serve.feedback_store import FeedbackStore
    from serve.settings import SettingsError, settings_from_config

    old = Path(args.old_log_dir)
    try:
        if not (old / OLD_REWARDS).exists() and not (old / OLD_DECISIONS).exists():
            raise ImportError_(f"old_log_dir: no {OLD_REWARDS} or {OLD_DECISIONS} in {old}")
        rewards, torn_r = read_jsonl(old / OLD_REWARDS)
        decisions, torn_d = read_jsonl(old / OLD_DECISIONS)
        settings = settings_from_config(args.config, args.set)
        store = FeedbackStore(open_database(settings), tau=float("nan"))  # imported rewards come computed
        counts = store.import_records(rewards, decisions)
        store.close()
    except (ImportError_, SettingsError, DatabaseError, OSError, KeyError) as e:
        print(f"barp import-feedback: error: {e}", file=sys.stderr)
        return 2
    print(f"imported {counts['rewards']} rewards and {counts['pending']} pending decisions; skipped "
          f"{counts['skipped']} already in the store and {torn_r + torn_d} torn final line(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
