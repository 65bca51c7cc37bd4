"""Joined rewards that retention took out of the feedback store's database, kept as Parquet files
under a path or storage URI (`pyarrow.fs`, as the trainer's state and the checkpoints), so that
traffic older than the database holds can still be replayed (`barp replay --archive`), judged on
(`barp ope --archive`) or brought into another store (`barp import-feedback`).

    <archive>/rewards-0000000000000001-0000000000050000.parquet   the rewards with ids 1..50000

Each file holds one run of reward ids, in the database's columns, and is named by its first and
last id. It is written under a temporary name and moved into place, so a file with a final name is
whole. The store deletes a run's rows only after its file is there (in short transactions, so
feedback commits do not wait on one long delete); a crash in between leaves a file whose rows,
or the last of them, are still in the database, and the next pass deletes them
(`finished_through`) instead of writing them twice. Readers take the archive's rows below the
database's oldest id, so a row in both is read once.
"""
from __future__ import annotations

import bisect
import re
import uuid
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from barp_ray.storage import filesystem
from serve.feedback_store import RewardReader, reward_record

_PART = re.compile(r"^rewards-(\d{16})-(\d{16})\.parquet$")
SCHEMA = pa.schema([("id", pa.int64()), ("request_id", pa.string()), ("time", pa.float64()), ("score", pa.float64()),
                    ("cost", pa.float64()), ("reward", pa.float64()), ("defaulted", pa.int8()), ("body", pa.string())])


class ArchiveError(ValueError):
    """A one-line problem with an archive, naming it."""


class FeedbackArchive:
    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = filesystem(uri)
        self.fs.create_dir(self.root, recursive=True)
        # The last part read, its rows and their ids: replay reads one part a batch at a time.
        self._cached: tuple[str, list[tuple], list[int]] | None = None

    def parts(self) -> list[tuple[int, int, str]]:
        """(first id, last id, path) of every whole file, oldest first."""
        found = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            m = _PART.match(info.base_name)
            if m and info.type == pafs.FileType.File:
                found.append((int(m.group(1)), int(m.group(2)), info.path))
        return sorted(found)

    def finished_through(self, oldest_id: int) -> int | None:
        """The last id of a file holding `oldest_id`, the database's oldest: its rows were archived and
        a crash stopped their deletion (before it began, or between two of its transactions)."""
        return next((last for first, last, _ in self.parts() if first <= oldest_id <= last), None)

    def write(self, chunks: Iterable[list[tuple]], first_id: int, last_id: int) -> None:
        """One run of rewards rows, ids first_id..last_id (REWARD_COLUMNS order, ascending), given in
        chunks, as one file: each chunk a row group, so the run is never all in memory."""
        name = f"rewards-{first_id:016d}-{last_id:016d}.parquet"
        tmp = f"{self.root.rstrip('/')}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as out, pq.ParquetWriter(out, SCHEMA) as writer:
            for rows in chunks:
                writer.write_table(pa.table([pa.array(col, type=f.type) for col, f in zip(zip(*rows), SCHEMA)], schema=SCHEMA))
        self.fs.move(tmp, f"{self.root.rstrip('/')}/{name}")

    def _read(self, path: str) -> tuple[list[tuple], list[int]]:
        """A part's rows (ascending ids) and their ids."""
        if self._cached is None or self._cached[0] != path:
            try:
                with self.fs.open_input_file(path) as f:
                    table = pq.read_table(f, schema=SCHEMA)
            except (OSError, pa.ArrowInvalid) as e:
                raise ArchiveError(f"retention.archive: cannot read {path} ({type(e).__name__})") from None
            rows = list(zip(*(table.column(f.name).to_pylist() for f in SCHEMA)))
            self._cached = (path, rows, [r[0] for r in rows])
        return self._cached[1], self._cached[2]

    def rows(self, after: int = 0, below: int | None = None) -> Iterator[tuple]:
        """Rows with after < id < below, in id order, each id once (parts may overlap after a crash)."""
        last = after
        for first, final, path in self.parts():
            if final <= last or (below is not None and first >= below):
                continue
            rows, ids = self._read(path)
            start, stop = bisect.bisect_right(ids, last), len(ids) if below is None else bisect.bisect_left(ids, below)
            if start < stop:
                yield from rows[start:stop]
                last = ids[stop - 1]

    def newest(self, below: int, limit: int) -> list[tuple]:
        """The newest `limit` rows with id < below, in id order."""
        taken: list[tuple] = []
        for first, _, path in reversed(self.parts()):
            if first >= below:
                continue
            rows, ids = self._read(path)
            stop = bisect.bisect_left(ids, min(below, taken[0][0]) if taken else below)
            taken = rows[max(0, stop - (limit - len(taken))):stop] + taken
            if len(taken) >= limit:
                break
        return taken


class ArchivedThenStored:
    """A `RewardReader` over the archive and then the database: the rewards as if none had left."""

    def __init__(self, archive: FeedbackArchive, reader: RewardReader):
        self.archive, self.reader = archive, reader

    def _stored_from(self) -> int | None:
        """The database's oldest reward id (None: it holds none): the archive is read below it."""
        first = self.reader.after(0, 1)
        return first[0]["id"] if first else None

    def after(self, offset: int, limit: int) -> list[dict[str, Any]]:
        out = []
        for row in self.archive.rows(after=offset, below=self._stored_from()):
            out.append(reward_record(row))
            if len(out) == limit:
                return out
        return out + self.reader.after(out[-1]["id"] if out else offset, limit - len(out))

    def up_to(self, offset: int, limit: int) -> list[dict[str, Any]]:
        stored = self.reader.up_to(offset, limit)
        if len(stored) == limit:
            return stored
        below = min(offset + 1, stored[0]["id"] if stored else (self._stored_from() or offset + 1))
        return [reward_record(r) for r in self.archive.newest(below, limit - len(stored))] + stored

    def close(self) -> None:
        self.reader.close()


def open_rewards(settings, with_archive: bool) -> RewardReader | ArchivedThenStored:
    """The rewards a read-only tool reads: the store's database, and before it the archive that
    `retention.archive` names (`--archive`)."""
    from serve.feedback_db import open_database, require_store

    require_store(settings)
    if with_archive and not settings.retention.archive:
        raise ArchiveError("--archive: the serve config sets no retention.archive")
    reader = RewardReader(open_database(settings))
    return ArchivedThenStored(FeedbackArchive(settings.retention.archive), reader) if with_archive else reader
