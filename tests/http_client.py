"""A small HTTP client for tests that talk to the Serve app over 127.0.0.1."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode(raw: bytes):
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return {"error": raw.decode("utf-8", "replace")}


TOKEN = "test-token-" + "0123456789abcdef"


class Client:
    def __init__(self, port: int, token: str | None = TOKEN):
        self.base = f"http://127.0.0.1:{port}"
        self.port = port
        self.token = token

    def call(self, method: str, path: str, body=None, raw: bytes | None = None, headers: dict | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"content-type": "application/json"}
        if self.token:
            h["authorization"] = f"Bearer {self.token}"
        h.update(headers or {})
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, _decode(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _decode(e.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            return 599, {"error": f"connection: {type(e).__name__}"}  # no HTTP answer at all

    def post(self, path, body=None, raw=None, headers=None):
        return self.call("POST", path, body, raw, headers)

    def get(self, path):
        return self.call("GET", path)


def stored_reward_ids(log_dir) -> list[str]:
    """Request ids of every joined reward in a feedback store, in stream order."""
    from serve.feedback_store import RewardReader

    return RewardReader(log_dir).request_ids()


def route_and_feedback(client, table, stop: threading.Event, accepted: list, failures: list, feedback: bool):
    """One client's loop until `stop`: route a table prompt (sampled mode), then, if `feedback`,
    report that model's logged score and cost. Ids that got a 200 go to `accepted`, the rest to
    `failures` as (call, status, body)."""
    import numpy as np

    rng = np.random.default_rng(threading.get_ident() % 2**32)
    models = list(table.models)
    while not stop.is_set():
        i = int(rng.integers(table.n))
        s1, r = client.post("/v1/route", {"prompt": str(table.prompts[i]), "preference": 0.8, "mode": "sample"})
        if s1 != 200:
            failures.append(("route", s1, r))
            continue
        if not feedback:
            accepted.append(r["request_id"])  # a routed request that succeeded
            continue
        a = models.index(r["model"])
        s2, f = client.post("/v1/feedback", {"request_id": r["request_id"], "score": float(table.scores[i, a]),
                                             "cost": float(table.costs[i, a])})
        if s2 == 200:
            accepted.append(r["request_id"])
        else:
            failures.append(("feedback", s2, f))


def wait_for(predicate, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while not predicate() and time.time() < deadline:
        time.sleep(0.2)


def feedback_rounds(client, table, n: int, failures: list) -> list:
    """Route + feedback from one client until n rewards were accepted; returns their request ids."""
    stop, accepted = threading.Event(), []
    t = threading.Thread(target=route_and_feedback, args=(client, table, stop, accepted, failures, True))
    t.start()
    while len(accepted) < n:
        time.sleep(0.2)
    stop.set()
    t.join()
    return accepted


def load_kill_load(svc, seconds_before_kill, seconds_after_kill, kill, feedback=True, threads=6, min_each_side=12):
    """Load, kill, more load. At least `min_each_side` rounds succeed before the kill and again
    after it (a busy machine is slower, not a failure); if the service never recovers, the
    caller's count assertions fail."""
    stop, accepted, failures = threading.Event(), [], []
    pool = [threading.Thread(target=route_and_feedback, args=(svc["client"], svc["table"], stop, accepted, failures, feedback))
            for _ in range(threads)]
    for t in pool:
        t.start()
    time.sleep(seconds_before_kill)
    wait_for(lambda: len(accepted) >= min_each_side, 60)
    before = len(accepted)
    kill()
    time.sleep(seconds_after_kill)
    wait_for(lambda: len(accepted) >= before + min_each_side, 120)
    stop.set()
    for t in pool:
        t.join(timeout=120)
    return accepted, failures
