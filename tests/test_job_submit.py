"""`ray job submit` against a real local head node (`ray start --head`), as a cluster user would."""
import json
import os
import shutil
import socket
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from barp_ray.policy import META_FILE, RoutingPolicy

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else shutil.which("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, env, timeout):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _stop_head(temp_dir: str) -> None:
    """Stop only this head's processes (every one carries its temp dir on its command line).

    `ray stop` would kill every Ray process on the machine, a developer's own clusters included.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if temp_dir.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not pids:
            return
        time.sleep(3)


@pytest.fixture
def head_node(tmp_path):
    import ray

    ray.shutdown()  # one cluster at a time on a 2-core machine; later tests re-init lazily
    gcs, dash, agent_http, agent_grpc, metrics, runtime_env = (_free_port() for _ in range(6))
    temp_dir = tempfile.mkdtemp(prefix="barp-ray-", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    start = _run(
        [
            RAY, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
            "--include-dashboard=true", "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            # Ray's fixed default ports may be taken by another cluster on this machine: pick free ones
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
        ],
        env,
        timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    address = f"http://127.0.0.1:{dash}"
    try:
        # `ray start` returns before the job agent is up on a busy machine: wait until jobs can be listed
        deadline = time.time() + 120
        while _run([RAY, "job", "list", f"--address={address}"], env, timeout=60).returncode != 0:
            assert time.time() < deadline, "the head's job server never came up"
            time.sleep(2)
        yield address, env
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_trains_a_checkpoint_and_routes_a_dataset_with_it(head_node, tmp_path):
    address, env = head_node
    ckpt = tmp_path / "ckpt"
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "BARP_CACHE_DIR": str(tmp_path / "cache")}}
    submit = [
        RAY, "job", "submit", f"--address={address}", "--working-dir", str(ROOT),
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "-m", "barp_ray.train", "--no-progress",
        "--set", "data.synthetic_prompts=600", "--set", "training.iterations=5",
        "--set", "training.rounds_per_iteration=1024", "--set", "scale.num_env_runners=1",
        "--checkpoint-dir", str(ckpt),
    ]
    log = _submit(submit, env)
    assert (ckpt / META_FILE).is_file()
    policy = RoutingPolicy.load(ckpt)
    assert len(policy.models) == 6
    meta = json.loads((ckpt / META_FILE).read_text())
    assert len(meta["history"]) == 5 and meta["history"][-1]["rounds"] >= 5 * 1024

    # The cluster then routes a dataset with that checkpoint: Ray Data actors inside the job
    prompts = ["What is 12345 + 67890?", "Write a haiku about rain.", "Prove that there are infinitely many primes."] * 4
    (tmp_path / "traffic.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    log = _submit([*submit[:submit.index("--") + 1], "python", "-m", "barp_ray.cli", "route-dataset", str(ckpt),
                   str(tmp_path / "traffic.jsonl"), str(tmp_path / "routed"), "--preference", "0.9"], env)
    assert f"routed 12 of 12 rows to {tmp_path / 'routed'}" in log, log[-4000:]
    import pyarrow.parquet as pq

    routed = pq.read_table(tmp_path / "routed").to_pandas()
    assert sorted(routed["prompt"]) == sorted(prompts)
    assert list(routed["model"]) == policy.route(list(routed["prompt"]), 0.9)


def _submit(command: list[str], env: dict) -> str:
    """`ray job submit` until the job agent answers; the job must succeed. Returns its log."""
    for _ in range(5):  # the agent can still be starting even after `ray job list` answers
        out = _run(command, env, timeout=600)
        log = out.stdout + out.stderr
        if "No available agent" not in log:
            break
        time.sleep(5)
    assert out.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower(), log[-4000:]
    return log
