"""barp_ray.client's retry rules against a real HTTP peer that answers a scripted sequence (the live
app's happy paths are in tests/test_serve.py::test_the_python_client_routes_rates_and_withdraws_when_the_block_fails)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from barp_ray.client import Decision, RouterClient, RouterError


@pytest.fixture
def scripted():
    """A server answering each POST with the next (status, body) of `script`; `seen` the paths."""
    state = {"script": [], "seen": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            state["seen"].append(self.path)
            status, body = state["script"].pop(0)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["client"] = RouterClient(f"http://127.0.0.1:{server.server_address[1]}", token="t" * 16, backoff_s=0.001)
    yield state
    server.shutdown()


def _decision(client) -> Decision:
    return Decision("r1", "m", 0.5, {"m": 0.5}, 1, [0.8, 0.2], "explore", client)


def test_a_replaced_replica_is_retried_and_a_retried_feedback_that_had_landed_is_not_an_error(scripted):
    route = {"request_id": "r1", "model": "m", "propensity": 0.5, "probabilities": {"m": 0.5}, "policy_version": 1,
             "preference": [0.8, 0.2], "mode": "explore"}
    scripted["script"] += [(503, {"error": "router: no replica could answer; retry shortly"}), (200, route)]
    assert scripted["client"].route("hi").model == "m"
    scripted["script"] += [(502, {"error": "upstream"}), (409, {"error": "request_id: feedback for 'r1' was already recorded"})]
    assert _decision(scripted["client"]).feedback(1.0, 0.0) == {"request_id": "r1", "duplicate": True}
    # a first attempt's 409 is the client's own mistake: an error
    scripted["script"] += [(409, {"error": "request_id: feedback for 'r1' was already recorded"})]
    with pytest.raises(RouterError) as e:
        _decision(scripted["client"]).feedback(1.0, 0.0)
    assert e.value.status == 409 and "already recorded" in e.value.message
    # a refusal is not retried; retries stop after `retries`
    scripted["script"] += [(422, {"error": "score: must be in [0, 1]"})]
    with pytest.raises(RouterError, match="HTTP 422: score: must be in"):
        _decision(scripted["client"]).feedback(2.0, 0.0)
    scripted["script"] += [(503, {"error": "x"})] * 4
    with pytest.raises(RouterError) as e:
        scripted["client"].route("hi")
    assert e.value.status == 503 and scripted["seen"].count("/v1/route") == 2 + 4
