"""More than one Ray node on this machine (`ray.cluster_utils.Cluster`: a head and worker nodes,
each its own raylet process); custom resources force placement across nodes."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest

from conftest import stop_serve

from barp_ray.config import apply_overrides, load_config

MB = 1024**2


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the session's one-node instance; later tests start it again
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 200 * MB})
    yield c
    ray.shutdown()
    c.shutdown()


def _actor_nodes(class_fragment: str) -> dict[str, str]:
    from ray.util.state import list_actors

    return {a.actor_id: a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if class_fragment in (a.class_name or "")}


def test_training_survives_sigkill_of_a_worker_node_and_finishes_with_a_checkpoint(cluster, tmp_path):
    import ray

    from barp_ray.policy import RoutingPolicy
    from barp_ray.training.run import train

    workers = [cluster.add_node(num_cpus=1, resources={"rollout_node": 1}, object_store_memory=100 * MB) for _ in range(3)]
    ray.init(address=cluster.address)
    cfg = apply_overrides(load_config(None), [
        "data.synthetic_prompts=600", "training.iterations=40", "training.rounds_per_iteration=2048",
        "scale.num_env_runners=2", "scale.num_envs_per_env_runner=256", "scale.num_cpus_per_env_runner=0.5",
        "output.log_every=5", f"output.checkpoint_dir={tmp_path / 'ckpt'}"])
    cfg.scale.custom_resources_per_env_runner = {"rollout_node": 1}  # one runner per worker node, never the head
    killed: dict = {}
    iterating = threading.Event()

    class Log(io.StringIO):
        """train()'s log stream: its first "iter" line (iteration 5 of 40) says training is under way.
        A fixed sleep did not: on a fast machine the 40 iterations were over within 3 s."""

        def write(self, text: str) -> int:
            if text.startswith("iter"):
                iterating.set()
            return super().write(text)

    def kill_a_runner_node():
        deadline = time.time() + 300
        while time.time() < deadline and len(runners := _actor_nodes("EnvRunner")) < 2:
            time.sleep(0.5)
        iterating.wait(timeout=300)  # mid-run: 5 of 40 iterations done
        victim = next(n for n in workers if n.node_id in set(runners.values()))
        killed["node"], killed["at"] = victim.node_id, time.time()
        cluster.remove_node(victim, allow_graceful=False)  # SIGKILL of the node's raylet and its workers

    killer = threading.Thread(target=kill_a_runner_node, daemon=True)
    killer.start()
    res = train(cfg, progress=False, out=Log())
    finished = time.time()
    killer.join(timeout=5)
    assert "at" in killed and killed["at"] < finished, "the node was not killed while training ran"
    assert len(res.history) == 40  # every iteration ran, through the loss
    rewards = [r["train_reward"] for r in res.history]
    assert all(r == r for r in rewards)  # no NaN from a half batch
    # it learned on the remote runners, weights synced every iteration, through the node loss
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.03, rewards
    RoutingPolicy.load(res.checkpoint)  # and the checkpoint is whole
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert killed["node"] not in alive


def test_colocated_routing_on_sqlite_refuses_an_ingress_replica_off_the_feedback_log_node(cluster, tmp_path):
    """The default topology with the default store: an SQLite file is one node's disk, so an
    ingress replica (which writes its decisions to the store itself) on another node than the
    feedback log must not start and write a second, private file; the deploy fails naming the
    setting instead."""
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from barp_ray.training.run import train
    from http_client import TOKEN, free_port, wait_for

    cluster.add_node(num_cpus=1, resources={"log_node": 1}, object_store_memory=100 * MB)
    cluster.add_node(num_cpus=1, resources={"ingress_node": 1}, object_store_memory=100 * MB)
    ray.init(address=cluster.address)
    cfg = apply_overrides(load_config(None), ["data.synthetic_prompts=300", "training.iterations=1",
                                              "training.rounds_per_iteration=256", f"output.checkpoint_dir={tmp_path / 'ckpt'}"])
    ckpt = train(cfg, progress=False).checkpoint
    (tmp_path / "token").write_text(TOKEN)
    args = {"checkpoint": ckpt, "log_dir": str(tmp_path / "log"), "auth": {"token_file": str(tmp_path / "token")},
            "router_autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "trainer": {"state_dir": str(tmp_path / "trainer"), "enabled": False}}  # topology and store: the defaults
    pinned = {"FeedbackLogDeployment": {"log_node": 0.5}, "RouterAPI": {"ingress_node": 0.5}}
    serve.start(http_options={"host": "127.0.0.1", "port": free_port(), "location": "HeadOnly"})
    try:
        serve.context._get_global_client().deploy_apps(ServeDeploySchema(applications=[{
            "name": "barp", "route_prefix": "/", "import_path": "serve.app:app_builder", "args": args,
            "deployments": [{"name": n, "ray_actor_options": {"num_cpus": 0.1, "resources": r}} for n, r in pinned.items()],
        }]))

        def failed() -> bool:
            app = serve.status().applications.get("barp")
            return app is not None and str(app.status).endswith("DEPLOY_FAILED")

        wait_for(failed, 240)
        app = serve.status().applications["barp"]
        assert failed(), app
        message = app.deployments["RouterAPI"].message
        assert "topology: colocated with feedback.database sqlite" in message and "postgresql" in message, message
    finally:
        stop_serve()


@pytest.mark.drill
def test_serving_survives_losing_the_node_with_the_store_client_and_the_trainer(cluster, tmp_path, postgres_url):
    """The node holding the feedback store's client and the trainer is SIGKILLed under load, with
    the PostgreSQL backend: every feedback that got a 200 is stored exactly once, routes keep
    answering through the router replicas on other nodes, and the trainer comes back on a spare
    node from its saved id and version (its state dir stands in for a shared volume)."""
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from barp_ray.data.prepare import split_tables
    from barp_ray.training.run import train
    from http_client import TOKEN, Client, free_port, route_and_feedback, wait_for
    from serve.feedback_db import PostgresDatabase
    from serve.feedback_store import RewardReader

    # head: controller, proxy, ingress. One router replica per "serving" node; the doomed node also
    # holds the store client and the trainer; a spare joins after deployment (a replaced pod).
    cluster.add_node(num_cpus=1, resources={"serving": 1}, object_store_memory=100 * MB)
    doomed = cluster.add_node(num_cpus=1, resources={"learning": 1, "serving": 1}, object_store_memory=100 * MB)
    ray.init(address=cluster.address)
    cfg = apply_overrides(load_config(None), ["data.synthetic_prompts=600", "training.iterations=2",
                                              "training.rounds_per_iteration=256", f"output.checkpoint_dir={tmp_path / 'ckpt'}"])
    ckpt = train(cfg, progress=False).checkpoint
    table = split_tables(cfg.data)[0]
    (tmp_path / "db-url").write_text(postgres_url + "\n")
    (tmp_path / "token").write_text(TOKEN)
    args = {
        "checkpoint": ckpt, "log_dir": str(tmp_path / "log"), "weights_poll_s": 0.5,
        "auth": {"token_file": str(tmp_path / "token")},
        "topology": "split",  # router replicas pinned to the serving nodes, apart from the head's ingress
        "router_autoscaling": {"min_replicas": 2, "max_replicas": 2},
        "feedback": {"database": "postgresql", "database_url_file": str(tmp_path / "db-url")},
        "trainer": {"state_dir": str(tmp_path / "trainer"), "min_batch": 16, "max_wait_s": 1.0},
    }
    pinned = {"FeedbackLogDeployment": {"learning": 0.4}, "TrainerDeployment": {"learning": 0.4},
              "RouterModel": {"serving": 0.6}}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
    deploy = ServeDeploySchema(applications=[{
        "name": "barp", "route_prefix": "/", "import_path": "serve.app:app_builder", "args": args,
        "deployments": [{"name": n, "ray_actor_options": {"num_cpus": 0.1, "resources": r}} for n, r in pinned.items()],
    }])
    serve.context._get_global_client().deploy_apps(deploy, _blocking=True)
    client = Client(port)
    try:
        wait_for(lambda: client.post("/v1/route", {"prompt": "up?", "preference": 0.5})[0] == 200, 120)
        where = {n: set(_actor_nodes(n).values()) for n in pinned}
        assert where["TrainerDeployment"] == where["FeedbackLogDeployment"] == {doomed.node_id}, where
        assert len(where["RouterModel"]) == 2 and doomed.node_id in where["RouterModel"], where
        spare = cluster.add_node(num_cpus=1, resources={"learning": 1, "serving": 1}, object_store_memory=100 * MB)

        stop, accepted, failures = threading.Event(), [], []
        pool = [threading.Thread(target=route_and_feedback, args=(client, table, stop, accepted, failures, True)) for _ in range(6)]
        for t in pool:
            t.start()
        wait_for(lambda: client.get("/v1/stats")[1].get("trainer", {}).get("version", 0) >= 1 and len(accepted) >= 40, 120)
        before = client.get("/v1/stats")[1]["trainer"]
        accepted_before, failed_before = len(accepted), len(failures)
        cluster.remove_node(doomed, allow_graceful=False)  # SIGKILL: raylet, store client, trainer
        killed_at = time.time()
        wait_for(lambda: len(accepted) >= accepted_before + 60, 240)
        stop.set()
        for t in pool:
            t.join(timeout=120)
        recovered_s = time.time() - killed_at
        wait_for(lambda: (s := client.get("/v1/stats")[1]).get("trainer", {}).get("offset") == s["log"].get("last_id"), 120)
        stats = client.get("/v1/stats")[1]
        where_after = {n: set(_actor_nodes(n).values()) for n in ("TrainerDeployment", "FeedbackLogDeployment")}
    finally:
        stop_serve()
    route_failures = [f for f in failures if f[0] == "route"]
    print(f"node loss: {accepted_before} feedback accepted before, {len(accepted) - accepted_before} after "
          f"(recovered in {recovered_s:.0f}s); failed routes {len(route_failures)}, failed feedback "
          f"{len(failures) - len(route_failures)} ({len(failures) - failed_before} after the kill): {failures[:3]}; "
          f"trainer before {before}, after {stats['trainer']}")
    stored = RewardReader(PostgresDatabase(postgres_url, "test")).request_ids()
    assert len(stored) == len(set(stored)), "a feedback was stored twice"
    assert not set(accepted) - set(stored), "a feedback that got a 200 is missing"
    assert len(accepted) >= accepted_before + 60
    assert where_after == {"TrainerDeployment": {spare.node_id}, "FeedbackLogDeployment": {spare.node_id}}, where_after
    t = stats["trainer"]
    assert t["version"] > before["version"] and t["offset"] == stats["log"]["last_id"] > before["offset"], (before, t)
