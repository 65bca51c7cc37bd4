"""Shared fixtures: one real local Ray instance per session, the real packaged MiniLM encoder,
and an embedding cache private to the test session."""
from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def _serve_as_shipped() -> None:
    """Every Ray this session starts (ray.init, `ray start`) serves the way the project ships:
    HAProxy ingress + Serve's throughput-optimised mode (serve/ray_env.py). An ingress replica
    drains 30 s before it stops under HAProxy (so load balancers can take it out of rotation);
    tests shut Serve down and start it again many times, so theirs drain for 1 s. HAProxy's stats
    and metrics listeners get free ports, not their fixed 8404 / 9101."""
    import socket

    from serve.ray_env import serve_as_shipped

    serve_as_shipped()
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    for k in HAPROXY_PORTS:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ.setdefault(k, str(s.getsockname()[1]))


_serve_as_shipped()

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _embedding_cache(tmp_path_factory):
    os.environ["BARP_CACHE_DIR"] = str(tmp_path_factory.mktemp("emb-cache"))
    yield


def start_local_ray() -> None:
    import ray

    if not ray.is_initialized():
        # log_to_driver=False: Serve replicas' access logs would bury pytest's output (they stay in Ray's log files)
        ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)


def train_small(root, *sets: str) -> str:
    """A checkpoint of the synthetic world, 600 prompts, trained for real on the session's Ray:
    what the tests that serve or read a policy start from (`sets`: more --set overrides)."""
    from barp_ray.config import apply_overrides, load_config
    from barp_ray.training.run import train

    start_local_ray()
    cfg = apply_overrides(load_config(None), ["data.synthetic_prompts=600", *sets, f"output.checkpoint_dir={root / 'ckpt'}"])
    return train(cfg, progress=False).checkpoint


def stop_serve(timeout_s: float = 15.0) -> None:
    """`serve.shutdown()`, then no HAProxy of the app may outlive it. One did in a CI run (Ray 2.60):
    the next app's HAProxy could not bind the session's stats port, and every later Serve test in
    the session failed with connection refused. So wait for the session's HAProxy stats and
    metrics ports to be released, and stop whatever still listens on them after `timeout_s`."""
    import contextlib
    import time

    import psutil
    from ray import serve

    serve.shutdown()
    ports = {int(os.environ[k]) for k in HAPROXY_PORTS}
    deadline = time.monotonic() + timeout_s
    while True:
        holders = {c.pid for c in psutil.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port in ports and c.pid}
        if not holders or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in holders:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def declarative_app(checkpoint: str, root, topology: str, port: int):
    """(args, deploy) for a one-router-replica app with the trainer off, on 127.0.0.1:`port` (Serve
    started here). `deploy(user_config)` (re)deploys it from a declarative config, as `serve deploy`
    or a RayService does, with `user_config` on every deployment that takes the live offer (None:
    none); an edited one is Serve's in-place update of the running replicas."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from serve.settings import LIVE_OFFER_DEPLOYMENTS

    args = {"checkpoint": checkpoint, "log_dir": str(root / "log"), "auth": {"token_file": str(root / "token")},
            "topology": topology, "router_autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "trainer": {"state_dir": str(root / "trainer"), "enabled": False}}
    http = {"host": "127.0.0.1", "port": port}
    serve.start(http_options=http)

    def deploy(user_config: dict | None) -> None:
        live = [{"name": n, "user_config": user_config} for n in LIVE_OFFER_DEPLOYMENTS[topology]] if user_config is not None else []
        config = {"http_options": http, "applications": [{"name": "barp", "route_prefix": "/", "import_path": "serve.app:app_builder",
                                                          "args": args, "deployments": live}]}
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))

    return args, deploy


@pytest.fixture
def ray_local():
    """The session's Ray instance; (re)started lazily because the job-submit test needs its own head node."""
    start_local_ray()
    yield


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL 16 server (the `pgserver` package), one per test session."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres):
    """A fresh, empty database on the session's server: its connection string."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres.psql(f"CREATE DATABASE {name};")
    return postgres.get_uri(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def feedback_db(request, tmp_path):
    """Opens a new connection to one feedback database per call: a directory for SQLite, a
    PostgresDatabase on a fresh database of the real server for PostgreSQL."""
    if request.param == "sqlite":
        return lambda: tmp_path
    from serve.feedback_db import PostgresDatabase

    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresDatabase(url, "test")


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray

        ray.shutdown()
    except Exception:
        pass
    session.config.stash[_EXIT] = int(exitstatus)


_EXIT = pytest.StashKey[int]()


def pytest_unconfigure(config):
    """Leave without interpreter finalizers once the results are reported: one CI run of 223
    passing tests ended in a segfault at interpreter exit (native threads of Ray / libpq being torn
    down), which turned a green run red. The exit status is pytest's own."""
    if _EXIT in config.stash:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT])
