"""Shared fixtures: one real local Ray instance per session, the real packaged MiniLM encoder,
and an embedding cache private to the test session."""
from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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


@pytest.fixture
def ray_local():
    """The session's Ray instance; (re)started lazily because the job-submit test needs its own head node."""
    start_local_ray()
    yield


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray

        ray.shutdown()
    except Exception:
        pass
