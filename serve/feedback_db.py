"""Where the feedback store lives: an embedded SQLite file (one machine) or PostgreSQL (a cluster).

Both hold the same three tables and the store speaks one SQL to them (`?` placeholders, `ON
CONFLICT`, `RETURNING`); this module owns what differs: connecting, the schema's types, and
what a durable commit means.

- SQLite: WAL; a feedback's commit is fsynced (synchronous=FULL), a routing decision's is not
  (NORMAL: it survives a killed process, and the next fsynced commit takes it to disk).
- PostgreSQL: every durable transaction first takes one transaction-scoped advisory lock, so
  reward ids are drawn and committed in the same order and a trainer reading `id > offset`
  never skips a row that commits late with a smaller id; decisions commit with
  `synchronous_commit = off` (the analogue of NORMAL). The connection string comes from an
  environment variable or a secrets file, is never stored in settings, and never logged.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

SQLITE_FILE = "feedback.sqlite3"
_ADVISORY_KEY = 0x62617270  # "barp"

_TABLES = """
CREATE TABLE IF NOT EXISTS decisions (request_id TEXT PRIMARY KEY, time {real} NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions(time);
CREATE TABLE IF NOT EXISTS rewards (
    id {serial},
    request_id TEXT NOT NULL UNIQUE,
    time {real} NOT NULL,
    score {real}, cost {real}, reward {real} NOT NULL,
    defaulted INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
"""


class DatabaseError(RuntimeError):
    """The configured database cannot be reached or opened; the message never holds credentials."""


class SQLiteDatabase:
    _BUSY_TIMEOUT_S = 30.0

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / SQLITE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._open()
        self._conn.executescript(_TABLES.format(real="REAL", serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
        self.lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._conn.execute(sql, args).fetchall()

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        self._conn.executemany(sql, rows)

    def _begin(self, durable: bool, wait: bool = True) -> None:
        """BEGIN IMMEDIATE: take the file's write lock. Without `wait`, sqlite3.OperationalError at
        once if another process holds it, instead of after the busy timeout."""
        self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        if wait:
            self._conn.execute("BEGIN IMMEDIATE")
            return
        self._conn.execute("PRAGMA busy_timeout=0")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        finally:
            self._conn.execute(f"PRAGMA busy_timeout={int(self._BUSY_TIMEOUT_S * 1000)}")

    @contextlib.contextmanager
    def _committed(self) -> Iterator[None]:
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def transaction(self, durable: bool) -> Iterator[None]:
        """One writer transaction, rolled back whole if anything inside raises."""
        with self.lock:
            self._begin(durable)
            with self._committed():
                yield

    @contextlib.contextmanager
    def transaction_if_free(self, durable: bool) -> Iterator[bool]:
        """Like `transaction`, but yields False at once, doing nothing, if this connection or the
        file's write lock is taken: a caller on an event loop writes inline when no one else is
        writing (a lone route's commit without fsync took ~0.13 ms in a replica, its hop to a thread
        ~0.33 ms) and never waits."""
        if not self.lock.acquire(blocking=False):
            yield False
            return
        try:
            try:
                self._begin(durable, wait=False)
            except sqlite3.OperationalError:  # another process is writing
                yield False
                return
            with self._committed():
                yield True
        finally:
            self.lock.release()

    def close(self) -> None:
        self._conn.close()


class PostgresDatabase:
    def __init__(self, url: str, source: str):
        import psycopg

        self.source = source  # where the URL came from, for messages: the URL itself is a secret
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise DatabaseError(f"feedback.database: cannot connect to PostgreSQL named by {source} "
                                f"({type(e).__name__})") from None
        self.lock = threading.Lock()
        with self.lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))  # replicas may start together
            for statement in _TABLES.format(real="DOUBLE PRECISION", serial="BIGSERIAL PRIMARY KEY").split(";"):
                if statement.strip():
                    self._conn.execute(statement)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        cur = self._conn.execute(self._sql(sql), args)
        return cur.fetchall() if cur.description is not None else []

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)

    @contextlib.contextmanager
    def transaction(self, durable: bool) -> Iterator[None]:
        with self.lock, self._conn.transaction():
            if durable:
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
            else:
                self._conn.execute("SET LOCAL synchronous_commit = off")
            yield

    @contextlib.contextmanager
    def transaction_if_free(self, durable: bool) -> Iterator[bool]:
        """Never inline: every PostgreSQL commit is a network round trip."""
        yield False

    def close(self) -> None:
        self._conn.close()


def database_url(feedback: Any) -> tuple[str, str]:
    """(url, where it came from) for `feedback.database: postgresql`; a one-line error otherwise."""
    if feedback.database_url_file:
        path = Path(feedback.database_url_file)
        try:
            url = path.read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise DatabaseError(f"feedback.database_url_file: cannot read a connection string from {path}") from None
        return url, f"file {path}"
    url = os.environ.get(feedback.database_url_env or "", "").strip()
    if not url:
        raise DatabaseError(f"feedback.database_url_env: environment variable {feedback.database_url_env!r} "
                            "is not set (or name feedback.database_url_file)")
    return url, f"env {feedback.database_url_env}"


def require_store(settings: Any) -> None:
    """For tools that only read an existing store (`barp ope`, `barp replay`): a missing SQLite file
    is an error naming where it was looked for, not a new empty store written there."""
    if settings.feedback.database == "sqlite" and not (Path(settings.log_dir) / SQLITE_FILE).is_file():
        raise DatabaseError(f"log_dir: no feedback store at {Path(settings.log_dir) / SQLITE_FILE}")


def open_database(settings: Any) -> SQLiteDatabase | PostgresDatabase:
    """The store's database for ServeSettings: SQLite under `log_dir`, or PostgreSQL."""
    if settings.feedback.database == "postgresql":
        return PostgresDatabase(*database_url(settings.feedback))
    return SQLiteDatabase(settings.log_dir)
