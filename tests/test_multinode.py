"""More than one Ray node on this machine (`ray.cluster_utils.Cluster`: a head and worker nodes,
each its own raylet process); custom resources force placement across nodes."""
from __future__ import annotations

import threading
import time

import pytest

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
    from barp_ray.train import train

    workers = [cluster.add_node(num_cpus=1, resources={"rollout_node": 1}, object_store_memory=100 * MB) for _ in range(3)]
    ray.init(address=cluster.address)
    cfg = apply_overrides(load_config(None), [
        "data.synthetic_prompts=600", "training.iterations=40", "training.rounds_per_iteration=2048",
        "scale.num_env_runners=2", "scale.num_envs_per_env_runner=256", "scale.num_cpus_per_env_runner=0.5",
        "output.log_every=20", f"output.checkpoint_dir={tmp_path / 'ckpt'}"])
    cfg.scale.custom_resources_per_env_runner = {"rollout_node": 1}  # one runner per worker node, never the head
    killed: dict = {}

    def kill_a_runner_node():
        deadline = time.time() + 300
        while time.time() < deadline and len(runners := _actor_nodes("EnvRunner")) < 2:
            time.sleep(0.5)
        time.sleep(3)  # mid-run: a few iterations in
        victim = next(n for n in workers if n.node_id in set(runners.values()))
        killed["node"], killed["at"] = victim.node_id, time.time()
        cluster.remove_node(victim, allow_graceful=False)  # SIGKILL of the node's raylet and its workers

    killer = threading.Thread(target=kill_a_runner_node, daemon=True)
    killer.start()
    res = train(cfg, progress=False)
    finished = time.time()
    killer.join(timeout=5)
    assert "at" in killed and killed["at"] < finished, "the node was not killed while training ran"
    assert len(res.history) == 40  # every iteration ran, through the loss
    assert all(r["train_reward"] == r["train_reward"] for r in res.history)  # no NaN from a half batch
    RoutingPolicy.load(res.checkpoint)  # and the checkpoint is whole
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert killed["node"] not in alive
