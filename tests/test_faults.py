"""Trying to break the routing service: fuzzed requests, killed processes, a corrupt log tail.

Real processes are killed with SIGKILL and real requests go over HTTP on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barp_ray.config import apply_overrides, load_config
from barp_ray.data.prepare import split_tables
from barp_ray.training.run import train
from http_client import TOKEN, Client, feedback_rounds, free_port, load_kill_load, stored_reward_ids
from conftest import stop_serve  # noqa: E402
from openai_upstream import Upstream


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    from conftest import start_local_ray
    from ray import serve

    from serve.app import app_builder

    start_local_ray()
    root = tmp_path_factory.mktemp("faults")
    (root / "token").write_text(TOKEN)
    cfg = apply_overrides(load_config(None), ["data.synthetic_prompts=600", "training.iterations=2",
                                              "training.rounds_per_iteration=256", f"output.checkpoint_dir={root / 'ckpt'}"])
    ckpt = train(cfg, progress=False).checkpoint
    table = split_tables(cfg.data)[0]
    upstream = Upstream()
    args = {
        "checkpoint": ckpt, "log_dir": str(root / "log"), "weights_poll_s": 0.3,
        "upstreams": {m: upstream.base_url for m in table.models},
        "auth": {"token_file": str(root / "token")},
        "topology": "split",  # router replicas of their own, to kill (tests/test_colocated.py kills colocated ones)
        "router_autoscaling": {"min_replicas": 2, "max_replicas": 2},
        "trainer": {"state_dir": str(root / "trainer"), "min_batch": 50, "enabled": False},
    }
    port = free_port()

    def deploy():
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app_builder(args), name="barp", route_prefix="/")
        return Client(port)

    yield {"client": deploy(), "deploy": deploy, "root": root, "table": table}
    stop_serve()
    upstream.close()


def _wait_healthy(client, seconds=90):
    deadline = time.time() + seconds
    while time.time() < deadline:
        st_, _ = client.post("/v1/route", {"prompt": "are you back?", "preference": 0.5})
        if st_ == 200 and client.get("/v1/stats")[0] == 200:
            return
        time.sleep(0.5)
    raise AssertionError("service did not recover")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=8,
)
route_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={"prompt": json_values | st.text(max_size=200), "preference": json_values,
                                        "mode": json_values | st.sampled_from(["greedy", "sample"]),
                                        "candidates": json_values}),
)
feedback_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={"request_id": json_values, "score": json_values, "cost": json_values}),
)
chat_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={"model": json_values | st.just("barp-auto"), "messages": json_values,
                                        "barp": json_values}),
)
FUZZ = {"n": 0, "5xx": []}


@pytest.mark.parametrize("path, bodies", [("/v1/route", route_bodies), ("/v1/feedback", feedback_bodies),
                                          ("/v1/chat/completions", chat_bodies)])
def test_fuzzed_requests_never_get_a_5xx(svc, path, bodies):
    client = svc["client"]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies)
    def one(body):
        raw = json.dumps(body, allow_nan=True).encode()
        status, reply = client.post(path, raw=raw)
        FUZZ["n"] += 1
        if status >= 500:
            FUZZ["5xx"].append((path, body, status, reply))
        assert status < 500, (body, status, reply)

    one()
    # and it still answers correctly afterwards
    status, r = client.post("/v1/route", {"prompt": "What is the capital city of Peru?", "preference": 0.8})
    assert status == 200 and r["model"] in svc["table"].models
    print(f"fuzz: {FUZZ['n']} requests so far, {len(FUZZ['5xx'])} 5xx")


def test_sigkill_feedback_log_mid_stream_loses_no_accepted_reward(svc):
    client = svc["client"]
    _, procs = client.get("/v1/admin/processes")
    accepted, failures = load_kill_load(svc, 3, 6, lambda: os.kill(procs["feedback_log"], signal.SIGKILL))
    _wait_healthy(client)
    _, after = client.get("/v1/admin/processes")
    assert after["feedback_log"] != procs["feedback_log"], "the log replica was not really killed"
    ids = stored_reward_ids(svc["root"] / "log")
    assert len(ids) == len(set(ids)), "a reward was written twice"
    missing = set(accepted) - set(ids)
    print(f"accepted {len(accepted)}, in log {len(ids)}, failures {len(failures)}: {failures[:3]}")
    assert len(accepted) > 20 and not missing
    # and after restarting the whole app the log is the same
    from ray import serve

    serve.delete("barp")
    client2 = svc["deploy"]()
    assert stored_reward_ids(svc["root"] / "log") == ids
    st_, stats = client2.get("/v1/stats")
    assert stats["log"]["rewards"] == len(ids)


def test_killing_a_router_replica_under_load_fails_no_request(svc):
    client = svc["client"]
    _, procs = client.get("/v1/admin/processes")
    assert len(procs["router"]) == 2, procs
    accepted, failures = load_kill_load(svc, 2, 6, lambda: os.kill(procs["router"][0], signal.SIGKILL), feedback=False)
    print(f"router kill: {len(accepted)} routes succeeded, failures {len(failures)} {failures[:3]}")
    assert failures == [] and len(accepted) > 20
    _wait_healthy(client)


def test_killing_the_trainer_keeps_serving_and_resumes(svc):
    client = svc["client"]
    table = svc["table"]
    failures: list = []
    feedback_rounds(client, table, 120, failures)
    st_, out = client.post("/v1/admin/train")
    assert st_ == 200 and out["updates"], out
    _, before = client.get("/v1/stats")
    deadline = time.time() + 90  # let both replicas pick the newest weights up first (asked directly)
    while True:
        _, procs = client.get("/v1/admin/processes")
        versions_now = procs["router_versions"]
        if len(versions_now) == 2 and set(versions_now.values()) == {before["trainer"]["published_version"]}:
            break
        assert time.time() < deadline, f"replicas never reached version {before['trainer']['version']}: {versions_now}"
        time.sleep(0.5)
    os.kill(procs["trainer"], signal.SIGKILL)
    # replicas keep serving the last good weights while the trainer is down/restarting
    versions = set()
    for _ in range(20):
        s, r = client.post("/v1/route", {"prompt": "still there?", "preference": 0.5})
        assert s == 200
        versions.add(r["policy_version"])
    assert versions == {before["trainer"]["published_version"]}
    _wait_healthy(client)
    _, after = client.get("/v1/stats")
    assert after["trainer"]["version"] == before["trainer"]["version"]
    assert after["trainer"]["offset"] == before["trainer"]["offset"]
    _, procs2 = client.get("/v1/admin/processes")
    assert procs2["trainer"] != procs["trainer"]
    # it resumes from its saved offset: only new feedback trains it
    feedback_rounds(client, table, 60, failures)
    st_, out = client.post("/v1/admin/train")
    assert out["updates"] and out["updates"][0]["version"] == before["trainer"]["version"] + 1


def test_replica_restarted_while_the_trainer_is_down_serves_the_newest_weights(svc):
    """The double kill: trainer and a router replica die together; the replica that comes back
    must start from the newest published weights (from disk), not from the original checkpoint."""
    client, table = svc["client"], svc["table"]
    for _ in range(2):  # two published versions of its own, whatever ran before
        feedback_rounds(client, table, 60, [])
        st_, out = client.post("/v1/admin/train")
        assert st_ == 200 and out["updates"], out
    _, stats = client.get("/v1/stats")
    newest = stats["trainer"]["published_version"]
    assert newest >= 2, stats
    _, procs = client.get("/v1/admin/processes")
    os.kill(procs["trainer"], signal.SIGKILL)
    os.kill(procs["router"][0], signal.SIGKILL)
    deadline = time.time() + 120
    while True:
        s, now = client.get("/v1/admin/processes")
        if s == 200 and len(now["router"]) == 2 and procs["router"][0] not in now["router"]:
            break
        assert time.time() < deadline, f"the killed replica was not replaced: {now}"
        time.sleep(0.5)
    fresh = [p for p in now["router"] if p not in procs["router"]]
    assert fresh, now
    for pid in fresh:
        assert now["router_started_versions"][str(pid)] == newest, now
    _wait_healthy(client)
    s, r = client.post("/v1/route", {"prompt": "which version now?", "preference": 0.5})
    assert s == 200 and r["policy_version"] == newest
