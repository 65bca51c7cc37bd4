"""`barp export-feedback DEST [--config configs/serve.yaml]`: every joined reward in the configured
store, written to DEST (a path or storage URI) in the retention archive's format, nothing deleted.

Why: to move a service from one machine's SQLite to a cluster's PostgreSQL (`barp import-feedback
DEST` against the new store), to keep a copy, or to read the log with any Parquet tool. It only
reads the store; run it while no feedback arrives (or again after: the import skips ids it has).
Pending decisions are not exported: they meet their reward wait time in the old store.
"""
from __future__ import annotations

import argparse
import sys


def export(settings, dest: str, batch: int) -> tuple[int, int]:
    """(rewards written, files) from the store `settings` names into a new archive at `dest`."""
    from serve.feedback_archive import ArchiveError, FeedbackArchive
    from serve.feedback_db import open_database, require_store
    from serve.feedback_store import RewardReader

    require_store(settings)
    archive = FeedbackArchive(dest)
    if archive.parts():
        raise ArchiveError(f"DEST: {dest} already holds archive files; export into an empty place")
    reader = RewardReader(open_database(settings))  # read as retention reads a run to archive it
    written = files = last = 0
    try:
        while ids := reader.reward_ids(after=last, limit=batch):
            archive.write(reader.reward_rows(ids[0], ids[-1]), ids[0], ids[-1])
            written, files, last = written + len(ids), files + 1, ids[-1]
        return written, files
    finally:
        reader.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="barp export-feedback", description=__doc__.splitlines()[0])
    p.add_argument("dest", metavar="DEST", help="an empty directory or storage URI for the Parquet files")
    p.add_argument("--config", default="configs/serve.yaml", help="serve config naming the store to read")
    p.add_argument("--set", action="append", default=[], help="override an app arg, e.g. log_dir=/data/barp/log")
    p.add_argument("--batch", type=int, default=50_000, help="the most rewards per file")
    args = p.parse_args(argv)
    from serve.feedback_archive import ArchiveError
    from serve.feedback_db import DatabaseError
    from serve.settings import SettingsError, settings_from_config

    try:
        if args.batch < 1:
            raise ArchiveError(f"--batch: must be >= 1, got {args.batch}")
        written, files = export(settings_from_config(args.config, args.set), args.dest, args.batch)
    except (ArchiveError, SettingsError, DatabaseError, OSError) as e:
        print(f"barp export-feedback: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {written} rewards in {files} file(s) to {args.dest}; bring them into another store with "
          f"barp import-feedback {args.dest} --config <its serve config>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
