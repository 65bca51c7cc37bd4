"""The reward stream's durable store: pending routing decisions, and feedback joined to them.

In SQLite (one machine) or PostgreSQL (a cluster; `serve/feedback_db.py`); a feedback's commit
is durable before its 2xx goes out, a decision's is not forced to disk on its own, so routing
does not pay an fsync per request. Two tables:
  decisions  one row per routed request still waiting for feedback (request_id is the primary
             key); a decision leaves this table when its feedback arrives, when the reward wait
             time runs out, or when it is withdrawn (its provider failed and the request went
             elsewhere), so the table holds the last `wait_s` of traffic, not all of it.
  rewards    one row per joined outcome, with a monotonically increasing `id`: the continuous
             trainer reads `id > offset` and checkpoints `offset` with its weights, so "which
             rewards were used" is one integer. `request_id` is UNIQUE: the database itself refuses
             a second feedback for one request. With retention (`prune`) the oldest leave, never
             one past the offset the trainer committed (`RewardReader.commit_offset`).
A decision whose wait time ran out is retired: dropped, or closed with the configured default
reward (the Personalizer convention). Request ids start with their routing time, so feedback
for a retired decision is told apart from an unknown id and refused with 410 without keeping a
tombstone per request.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from envs.reward import reward
from serve.feedback_db import PostgresDatabase, SQLiteDatabase


def _database(where: "str | Path | SQLiteDatabase | PostgresDatabase") -> "SQLiteDatabase | PostgresDatabase":
    return SQLiteDatabase(where) if isinstance(where, (str, Path)) else where


class FeedbackError(ValueError):
    status, reason = 400, "invalid"


class UnknownRequest(FeedbackError):
    status, reason = 404, "unknown_request"


class DuplicateFeedback(FeedbackError):
    status, reason = 409, "duplicate"


class ExpiredRequest(FeedbackError):
    status, reason = 410, "expired"


class MissingCost(FeedbackError):
    """A schema-valid feedback that this request's state cannot complete (no priced answer): 409,
    as a conflict with the resource, not 422, which the schema promises only for invalid bodies."""

    status, reason = 409, "missing_cost"


def encode_vector(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode("ascii")


def decode_vector(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=np.float32)


def new_request_id(now: float | None = None) -> str:
    """12 hex digits of routing time in ms, then 20 random ones: unique, sortable, and dated."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{uuid.uuid4().hex[:20]}"


def routed_at(request_id: str) -> float | None:
    if len(request_id) != 32:
        return None
    try:
        return int(request_id[:12], 16) / 1000.0
    except ValueError:
        return None


_INSERT_DECISION = "INSERT INTO decisions (request_id, time, body) VALUES (?, ?, ?)"
REWARD_COLUMNS = "id, request_id, time, score, cost, reward, defaulted, body"  # a rewards row, as the archive keeps it too
TRAINER_OFFSET = "trainer_offset"
# Retention's reads and deletes, a few MB and a few ms each: feedback commits never wait long behind a pass
# (bench/retention.py: one 50,000-row read and delete held a feedback write ~0.8 s).
READ_CHUNK, DELETE_CHUNK = 2000, 2000


def _number(v: Any) -> float | None:
    return None if v is None else float(v)


def _unknown(request_id: str) -> "UnknownRequest":
    return UnknownRequest(f"request_id: unknown request {request_id!r} (or already withdrawn)")


def reward_record(row: tuple) -> dict[str, Any]:
    """A rewards row (REWARD_COLUMNS, from the database or an archive file) as the trainer reads it."""
    i, rid, t, q, c, r, d, body = row
    return {**json.loads(body), "id": int(i), "request_id": rid, "feedback_time": t, "score": q, "cost": c, "reward": r,
            "defaulted": bool(d)}


def _decision_rows(decisions: list[dict[str, Any]]) -> list[tuple]:
    return [(d["request_id"], float(d["time"]), json.dumps(d, separators=(",", ":"))) for d in decisions]


class FeedbackStore:
    """`where`: a directory (SQLite file in it) or an open database from `feedback_db.open_database`."""

    def __init__(self, where, tau: float, wait_s: float = 600.0, on_missing: str = "drop",
                 default_reward: float = 0.0):
        self.db = _database(where)
        self.tau, self.wait_s, self.on_missing, self.default_reward = float(tau), float(wait_s), on_missing, float(default_reward)

    def record_decision(self, decision: dict[str, Any]) -> None:
        self.record_decisions([decision])

    def record_decisions(self, decisions: list[dict[str, Any]]) -> None:
        """One transaction for a router batch. Committed without forcing it to disk (it survives a
        killed process); the next durable feedback commit takes it to disk with it."""
        with self.db.transaction(durable=False):
            self.db.executemany(_INSERT_DECISION, _decision_rows(decisions))

    def record_decisions_if_free(self, decisions: list[dict[str, Any]]) -> bool:
        """`record_decisions` without waiting: False, nothing written, if another writer holds the
        database (or it is PostgreSQL); then the caller writes them off its event loop."""
        with self.db.transaction_if_free(durable=False) as free:
            if free:
                self.db.executemany(_INSERT_DECISION, _decision_rows(decisions))
        return free

    async def record_decisions_async(self, decisions: list[dict[str, Any]]) -> None:
        """For an event loop: inline when the database is free, else in a thread (a write must
        not stall the loop behind another process's fsync or a network round trip)."""
        if not self.record_decisions_if_free(decisions):
            await asyncio.to_thread(self.record_decisions, decisions)

    def note_answer_cost(self, request_id: str, cost: float) -> bool:
        """Keep what the service priced a pending decision's answer at (its provider's token usage
        at the offer's prices), so its feedback may leave the cost out. False: not pending."""
        with self.db.transaction(durable=False):
            rows = self.db.execute("SELECT body FROM decisions WHERE request_id = ?", (request_id,))
            if not rows:
                return False
            body = {**json.loads(rows[0][0]), "answer_cost": float(cost)}
            self.db.execute("UPDATE decisions SET body = ? WHERE request_id = ?", (json.dumps(body, separators=(",", ":")), request_id))
        return True

    def record_feedback(self, request_id: str, score: float, cost: float | None, replay: bool = False,
                        client: str | None = None, latency_s: float | None = None) -> dict[str, Any]:
        """Join feedback to its pending decision and persist it; raises, writing nothing, on bad input.

        `cost=None` takes the answer's cost the service priced (`note_answer_cost`). `replay=True`
        marks the service's own retry after a crash: if the first attempt was already committed with
        the same values, that result is returned instead of a duplicate error. `client`: a named
        client may rate only its own routes; another's is an unknown request to it. `latency_s`: how
        long the answer took, as the client measured it, kept with the reward (routes' latency limit).
        """
        with self.db.transaction(durable=True):
            return self._join(request_id, float(score), None if cost is None else float(cost), replay, client, latency_s)

    def _join(self, request_id: str, score: float, cost: float | None, replay: bool, client: str | None,
              latency_s: float | None = None) -> dict[str, Any]:
        rows = self.db.execute("SELECT body FROM decisions WHERE request_id = ?", (request_id,))
        row = rows[0] if rows else None
        if row is None:
            done = self._reward_row(request_id, client)
            if done is not None and not done[4] and replay and done[1] == score and (cost is None or done[2] == cost):
                return {"request_id": request_id, "id": done[0], "score": score, "cost": done[2], "reward": done[3]}
            self._not_pending(request_id, done)
        decision = json.loads(row[0])
        if client is not None and decision.get("client") != client:
            raise _unknown(request_id)
        if cost is None:
            cost = decision.get("answer_cost")
            if cost is None:
                raise MissingCost(f"cost: required for {request_id!r}; the service priced no answer for it (only chat "
                                  "answers whose provider reported token usage, for a model with prices, are priced)")
        w = decision["preference"]
        r = float(reward(score, cost, w[0], w[1], self.tau))
        body = row[0]
        if latency_s is not None:
            decision["latency_s"] = float(latency_s)
            body = json.dumps(decision, separators=(",", ":"))
        record = {**decision, "score": score, "cost": cost, "reward": r}
        (new_id,), = self.db.execute(
            "INSERT INTO rewards (request_id, time, score, cost, reward, defaulted, body) VALUES (?, ?, ?, ?, ?, 0, ?) "
            "RETURNING id", (request_id, time.time(), score, cost, r, body))
        self.db.execute("DELETE FROM decisions WHERE request_id = ?", (request_id,))
        return {**record, "id": int(new_id)}

    def is_pending(self, request_id: str) -> bool:
        with self.db.lock:
            return bool(self.db.execute("SELECT 1 FROM decisions WHERE request_id = ?", (request_id,)))

    def withdraw_decisions(self, request_ids: list[str]) -> int:
        """Remove pending decisions that will never have an outcome to rate (their model's provider
        failed and the request went to another model): neither dropped nor defaulted later, so a
        provider outage never teaches the policy that the model was bad for the prompt. Feedback
        for a withdrawn id is then an unknown request (404). Returns how many were pending."""
        with self.db.transaction(durable=False):
            return self._delete_pending(request_ids)

    def _delete_pending(self, request_ids: list[str]) -> int:
        gone = 0
        for rid in request_ids:
            gone += len(self.db.execute("DELETE FROM decisions WHERE request_id = ? RETURNING request_id", (rid,)))
        self._count("withdrawn", gone)
        return gone

    def _count(self, name: str, n: int) -> None:
        """Add `n` to a counter, inside the caller's transaction."""
        if n:
            self.db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                            "ON CONFLICT(name) DO UPDATE SET value = counters.value + excluded.value", (name, n))

    def _reward_row(self, request_id: str, client: str | None = None) -> tuple | None:
        """(id, score, cost, reward, defaulted) of the request's joined reward, if it has one (and,
        with `client`, if that client routed it: another's reward is none of its business)."""
        found = self.db.execute("SELECT id, score, cost, reward, defaulted, body FROM rewards WHERE request_id = ?", (request_id,))
        if not found or (client is not None and json.loads(found[0][5]).get("client") != client):
            return None
        return found[0][:5]

    def _not_pending(self, request_id: str, done: tuple | None) -> None:
        """Raise the error for feedback (or a withdrawal) on a request that is not pending; `done`:
        its row in rewards, if any."""
        if done is not None and done[4]:
            raise ExpiredRequest(f"request_id: feedback for {request_id!r} came after the reward wait time "
                                 f"({self.wait_s:g} s); the decision was closed with the default reward")
        if done is not None:
            raise DuplicateFeedback(f"request_id: feedback for {request_id!r} was already recorded")
        t = routed_at(request_id)
        if t is not None and time.time() - t > self.wait_s:
            raise ExpiredRequest(f"request_id: feedback for {request_id!r} came after the reward wait time "
                                 f"({self.wait_s:g} s); the decision was retired and this feedback changes nothing")
        raise _unknown(request_id)

    def withdraw(self, request_id: str, client: str | None = None) -> None:
        """A client's word that a routed request got no answer to rate (it called the provider
        itself, and that failed): the decision is withdrawn as `withdraw_decisions` does, durably;
        refused as feedback would be when the request is not pending (or, to a named client, not its own)."""
        with self.db.transaction(durable=True):
            rows = self.db.execute("SELECT body FROM decisions WHERE request_id = ?", (request_id,))
            if rows and (client is None or json.loads(rows[0][0]).get("client") == client) and self._delete_pending([request_id]):
                return
            self._not_pending(request_id, self._reward_row(request_id, client))

    def retire_expired(self, now: float | None = None) -> int:
        """Close every decision older than the wait time: default reward, or dropped. Returns how many."""
        cutoff = (time.time() if now is None else now) - self.wait_s
        with self.db.transaction(durable=True):
            rows = self.db.execute("SELECT request_id, body FROM decisions WHERE time < ? ORDER BY time", (cutoff,))
            if not rows:
                return 0
            if self.on_missing == "default":
                self.db.executemany(
                    "INSERT INTO rewards (request_id, time, score, cost, reward, defaulted, body) "
                    "VALUES (?, ?, NULL, NULL, ?, 1, ?) ON CONFLICT (request_id) DO NOTHING",
                    [(rid, time.time(), self.default_reward, body) for rid, body in rows])
            self.db.execute("DELETE FROM decisions WHERE time < ?", (cutoff,))
            self._count("defaulted" if self.on_missing == "default" else "dropped", len(rows))
        return len(rows)

    def import_records(self, rewards: list[dict], decisions: list[dict]) -> dict[str, int]:
        """Bring in joined rewards (in order) and still-pending decisions from another log, in one
        durable transaction; request ids already present are skipped. A reward keeps the time its
        feedback came (`feedback_time`, which archives carry), else its decision's: retention's
        max_age_days counts from it, so an import must not make old rewards young."""
        done = {"rewards": 0, "pending": 0, "skipped": 0}
        rewarded = {r["request_id"] for r in rewards}
        with self.db.transaction(durable=True):
            for r in rewards:
                body = {k: v for k, v in r.items() if k not in ("score", "cost", "reward", "defaulted", "feedback_time")}
                when = r.get("feedback_time", r.get("time"))
                got = self.db.execute(
                    "INSERT INTO rewards (request_id, time, score, cost, reward, defaulted, body) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (request_id) DO NOTHING RETURNING id",
                    (r["request_id"], time.time() if when is None else float(when), _number(r["score"]), _number(r["cost"]),
                     float(r["reward"]), int(bool(r.get("defaulted"))), json.dumps(body, separators=(",", ":"))))
                done["rewards" if got else "skipped"] += 1
            for d in decisions:
                if d["request_id"] in rewarded or self.db.execute("SELECT 1 FROM rewards WHERE request_id = ?",
                                                                  (d["request_id"],)):
                    continue
                got = self.db.execute("INSERT INTO decisions (request_id, time, body) VALUES (?, ?, ?) "
                                      "ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                                      (d["request_id"], float(d["time"]), json.dumps(d, separators=(",", ":"))))
                done["pending" if got else "skipped"] += 1
        return done

    def prune(self, keep: int | None, max_age_s: float | None, trained_only: bool, archive=None, batch: int = 50_000,
              now: float | None = None) -> int:
        """Retention: remove the rewards that are not among the newest `keep` or are older than
        `max_age_s`, none past the trainer's committed offset when `trained_only` (none at all before
        it commits one). With an `archive` (serve/feedback_archive.py) each run of `batch` rewards is
        written there whole before it leaves the database, so a crash between the two leaves a copy,
        never a loss; a shorter run waits for more unless its rewards are past `max_age_s` (an
        archive of many small files is slow to read). Returns how many left."""
        with self.db.lock:
            (oldest, newest), = self.db.execute("SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM rewards")
            offset = dict(self.db.execute("SELECT name, value FROM counters WHERE name = ?", (TRAINER_OFFSET,))).get(TRAINER_OFFSET)
            aged = beyond = None
            if max_age_s is not None:
                (aged,), = self.db.execute("SELECT MAX(id) FROM rewards WHERE time < ?",
                                           ((time.time() if now is None else now) - max_age_s,))
            if keep is not None:  # the newest id not among the newest `keep` (ids may have gaps)
                found = self.db.execute("SELECT id FROM rewards ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,))
                beyond = found[0][0] if found else None
        cut, forced = max(beyond or 0, aged or 0), aged or 0
        if trained_only:
            cut, forced = min(cut, offset or 0), min(forced, offset or 0)
        if not newest or cut < oldest:
            return 0
        gone, reader = 0, RewardReader(self.db)  # reads on this store's connection
        if archive is not None:
            done = archive.finished_through(oldest)  # a file written before a crash took (all) its rows out
            if done is not None:
                gone += self._delete_ids(reader.reward_ids(through=min(done, cut)))
        while True:
            ids = reader.reward_ids(through=cut, limit=batch)
            if archive is not None and len(ids) < batch:
                ids = [i for i in ids if i <= forced]
            if not ids:
                return gone
            if archive is not None:
                archive.write(reader.reward_rows(ids[0], ids[-1]), ids[0], ids[-1])
            gone += self._delete_ids(ids)

    def _delete_ids(self, ids: list[int]) -> int:
        """Delete these (ascending, the oldest in the table) in short transactions, counting them."""
        gone = 0
        for i in range(0, len(ids), DELETE_CHUNK):
            with self.db.transaction(durable=True):
                n = len(self.db.execute("DELETE FROM rewards WHERE id <= ? RETURNING id", (ids[min(i + DELETE_CHUNK, len(ids)) - 1],)))
                self._count("pruned", n)
            gone += n
        return gone

    def counts(self) -> dict[str, int]:
        with self.db.lock:
            (pending,), = self.db.execute("SELECT COUNT(*) FROM decisions")
            (rewards, first, last), = self.db.execute("SELECT COUNT(*), COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM rewards")
            retired = dict(self.db.execute("SELECT name, value FROM counters"))
        return {"pending": pending, "rewards": rewards, "first_id": first, "last_id": last,
                "dropped": retired.get("dropped", 0), "defaulted": retired.get("defaulted", 0),
                "withdrawn": retired.get("withdrawn", 0), "pruned": retired.get("pruned", 0),
                "trainer_offset": retired.get(TRAINER_OFFSET)}

    def close(self) -> None:
        self.db.close()


class RewardReader:
    """The trainer's view: joined rewards by id (SQLite's WAL lets it read while the store writes)."""

    def __init__(self, where):
        self.db = _database(where)

    def after(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """Rewards with id > offset, oldest first."""
        return self._rows("WHERE id > ? ORDER BY id LIMIT ?", (offset, limit))

    def up_to(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` rewards with id <= offset, oldest first (refills replay after a restart)."""
        return self._rows("WHERE id <= ? ORDER BY id DESC LIMIT ?", (offset, limit))[::-1]

    def request_ids(self) -> list[str]:
        """Every joined reward's request id, in stream order (audits and tests)."""
        with self.db.lock:
            return [r[0] for r in self.db.execute("SELECT request_id FROM rewards ORDER BY id")]

    def reward_ids(self, after: int = 0, through: int = 2**62, limit: int | None = None) -> list[int]:
        """The ids of rewards with after < id <= through, ascending, at most `limit`."""
        with self.db.lock:
            return [i for i, in self.db.execute("SELECT id FROM rewards WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                                                (after, through, limit if limit is not None else 2**62))]

    def reward_rows(self, first_id: int, last_id: int):
        """The rows first_id..last_id, READ_CHUNK at a time: no long hold of the connection (or of
        the interpreter, in the feedback log's process) while a run is archived."""
        after = first_id - 1
        while after < last_id:
            with self.db.lock:
                rows = self.db.execute(f"SELECT {REWARD_COLUMNS} FROM rewards WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                                       (after, last_id, READ_CHUNK))
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def commit_offset(self, offset: int) -> None:
        """The trainer's saved read position, kept in the store as a queue consumer commits its
        offset: retention removes no reward past it. Set, not raised: a trainer that starts over
        reads from the start, and retention must wait for it."""
        with self.db.transaction(durable=False):
            self.db.execute(f"INSERT INTO counters (name, value) VALUES ('{TRAINER_OFFSET}', ?) "
                            "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (int(offset),))

    def _rows(self, where: str, args: tuple) -> list[dict[str, Any]]:
        with self.db.lock:
            rows = self.db.execute(f"SELECT {REWARD_COLUMNS} FROM rewards {where}", args)
        return [reward_record(row) for row in rows]

    def close(self) -> None:
        self.db.close()
