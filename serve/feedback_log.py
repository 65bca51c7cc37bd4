"""The reward stream's durable log: routing decisions, and feedback joined to them.

Two append-only JSONL files in one directory:
  decisions.jsonl  one line per routed request: id, embedding, preference, action, the
                   behaviour policy's probability of that action, policy_version.
  rewards.jsonl    one line per accepted feedback: the decision's context plus score, cost
                   and the reward computed with the training formula.
Lines are flushed to the OS on every write (a killed process loses nothing); feedback lines are
also fsync'ed before the 2xx goes out. On open, a torn final line (a crash mid-write) is cut off.
The continuous trainer reads rewards.jsonl by byte offset, so "which rewards were used" is one
integer saved with its weights.
"""
from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from envs.reward import reward

DECISIONS = "decisions.jsonl"
REWARDS = "rewards.jsonl"


class FeedbackError(ValueError):
    status = 400


class UnknownRequest(FeedbackError):
    status = 404


class DuplicateFeedback(FeedbackError):
    status = 409


def encode_vector(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode("ascii")


def decode_vector(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=np.float32)


def _repair_and_index(path: Path) -> list[tuple[int, dict]]:
    """(byte offset, record) of every complete line; a torn tail is truncated so appends start clean."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(end)
    out, pos = [], 0
    for line in raw[:end].splitlines(keepends=True):
        if line.strip():
            out.append((pos, json.loads(line)))
        pos += len(line)
    return out


class FeedbackLog:
    """Memory holds only an index (request_id -> byte offset of its decision line; request_id ->
    score/cost/reward of accepted feedback), not the decisions themselves: a decision carries a
    3 KB embedding, and a service routes millions of requests."""

    def __init__(self, directory: str | Path, tau: float):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tau = float(tau)
        self._lock = threading.Lock()
        self._decisions: dict[str, int] = {
            d["request_id"]: pos for pos, d in _repair_and_index(self.dir / DECISIONS)
        }
        self._rewarded: dict[str, tuple[float, float, float]] = {
            r["request_id"]: (r["score"], r["cost"], r["reward"]) for _, r in _repair_and_index(self.dir / REWARDS)
        }
        self._dec_f = open(self.dir / DECISIONS, "ab")
        self._dec_r = open(self.dir / DECISIONS, "rb")
        self._rew_f = open(self.dir / REWARDS, "a", encoding="utf-8")

    def record_decision(self, decision: dict[str, Any]) -> None:
        line = (json.dumps(decision, separators=(",", ":")) + "\n").encode()
        with self._lock:
            pos = self._dec_f.tell()
            self._dec_f.write(line)
            self._dec_f.flush()
            self._decisions[decision["request_id"]] = pos

    def _decision_at(self, pos: int) -> dict:
        self._dec_r.seek(pos)
        return json.loads(self._dec_r.readline())

    def record_feedback(self, request_id: str, score: float, cost: float, replay: bool = False) -> dict[str, Any]:
        """Join feedback to its decision and persist it; raises before writing anything on bad input.

        `replay=True` marks the service's own retry after a crash: if the first attempt was already
        written with the same values, that result is returned instead of a duplicate error.
        """
        with self._lock:
            pos = self._decisions.get(request_id)
            if pos is None:
                raise UnknownRequest(f"request_id: unknown request {request_id!r}")
            if request_id in self._rewarded:
                old_score, old_cost, old_reward = self._rewarded[request_id]
                if replay and old_score == float(score) and old_cost == float(cost):
                    return {"request_id": request_id, "score": old_score, "cost": old_cost, "reward": old_reward}
                raise DuplicateFeedback(f"request_id: feedback for {request_id!r} was already recorded")
            decision = self._decision_at(pos)
            w = decision["preference"]
            r = float(reward(score, cost, w[0], w[1], self.tau))
            record = {**decision, "score": float(score), "cost": float(cost), "reward": r}
            self._rew_f.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._rew_f.flush()
            os.fsync(self._rew_f.fileno())
            self._rewarded[request_id] = (float(score), float(cost), r)
            return record

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"decisions": len(self._decisions), "rewards": len(self._rewarded)}

    def close(self) -> None:
        for f in (self._dec_f, self._dec_r, self._rew_f):
            f.close()


def read_rewards(directory: str | Path, offset: int, max_records: int) -> tuple[list[dict], int]:
    """Complete reward lines from byte `offset`; returns them and the offset just past the last one."""
    path = Path(directory) / REWARDS
    if not path.exists():
        return [], offset
    records: list[dict] = []
    with open(path, "rb") as f:
        f.seek(offset)
        while len(records) < max_records:
            line = f.readline()
            if not line.endswith(b"\n"):  # torn or still being written: stop before it
                break
            offset += len(line)
            if line.strip():
                records.append(json.loads(line))
    return records, offset
