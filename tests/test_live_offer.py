"""Issue 13 over real HTTP: the offered models and prices change through Serve's in-place update.

The app is deployed from a declarative config (what `serve deploy` / a RayService sends), and the
offer is edited in the deployments' `user_config`: Serve then calls `reconfigure` on the running
replicas instead of replacing them.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from barp_ray.config import apply_overrides, load_config
from barp_ray.training.run import train
from http_client import TOKEN, Client, free_port
from conftest import stop_serve  # noqa: E402


@pytest.fixture(scope="module")
def mc_world(tmp_path_factory):
    from conftest import start_local_ray

    start_local_ray()
    root = tmp_path_factory.mktemp("offer")
    (root / "token").write_text(TOKEN + "\n")
    cfg = apply_overrides(load_config(None), ["data.synthetic_prompts=1200", "training.iterations=3",
                                              "training.rounds_per_iteration=512", "policy.head=model_conditioned",
                                              f"output.checkpoint_dir={root / 'ckpt'}"])
    return {"root": root, "checkpoint": train(cfg, progress=False).checkpoint}


@pytest.mark.parametrize("topology", ["colocated", "split"])
def test_offered_models_and_prices_change_in_place_with_no_failed_request(mc_world, topology):
    """Re-price a model, then add one the policy never trained on and remove another, while a
    client keeps routing: no failed request, the same replica throughout (reconfigured, not
    replaced), a doubled price lowers that model's share at once (no training step), and a bad
    list is refused naming the field while the current offer keeps serving."""
    from conftest import declarative_app
    from ray import serve

    from barp_ray.policy import read_meta
    from serve.app import app_builder
    from serve.settings import SettingsError

    root, port = mc_world["root"], free_port()
    meta = read_meta(mc_world["checkpoint"])
    offer = {m: dict(meta["prices"][m]) for m in meta["models"]}
    args, deploy_live = declarative_app(mc_world["checkpoint"], root, topology, port)
    client = Client(port)

    def deploy(models=None):
        deploy_live(None if models is None else {"models": models})

    def offered():
        st, body = client.get("/v1/models")
        return {m["id"]: m["price_per_mtok"] for m in body["models"] if m["id"] != "barp-auto"} if st == 200 else {}

    def wait_for(check, what, timeout=120):
        deadline = time.time() + timeout
        while not check():
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.5)
        time.sleep(1.0)  # the ingress answers first; give the router replica's reconfigure a moment

    def route(prompt, **extra):
        return client.post("/v1/route", {"prompt": prompt, "preference": 0.5, "mode": "sample", **extra})

    prompts = ["write a sql query that joins two tables", "a sonnet about the sea", "prove that sqrt(2) is irrational",
               "summarise this contract clause", "fix this python stack trace", "plan a three day trip to Rome"]

    def share(model):
        return float(np.mean([route(p)[1]["probabilities"].get(model, 0.0) for p in prompts]))

    deploy()
    try:
        wait_for(lambda: offered() == offer, "the first deploy")
        stop, failures, replicas = threading.Event(), [], set()

        def keep_routing():
            while not stop.is_set():
                st, r = route("a steady client")
                (replicas.add(r["replica"]) if st == 200 else failures.append((st, r)))

        loader = threading.Thread(target=keep_routing)
        loader.start()
        try:
            before = share("chat-8b")
            dearer = {**offer, "chat-8b": {k: 2 * v for k, v in offer["chat-8b"].items()}}
            deploy(dearer)
            wait_for(lambda: offered() == dearer, "the new price")
            assert share("chat-8b") < before

            changed = {m: p for m, p in offer.items() if m != "tiny-1b"}
            changed["newcomer-20b"] = {"input_per_mtok": 0.5, "output_per_mtok": 1.5, "size_b": 20}
            deploy(changed)
            wait_for(lambda: "newcomer-20b" in offered(), "the new model")
            assert list(offered()) == list(changed)
            st, r = route("write a haiku", candidates=["newcomer-20b"])
            assert st == 200 and r["model"] == "newcomer-20b" and set(r["probabilities"]) == set(changed), r
            st, fb = client.post("/v1/feedback", {"request_id": r["request_id"], "score": 0.9, "cost": 0.001})
            assert st == 200, fb
            st, err = route("write a haiku", candidates=["tiny-1b"])
            assert st == 422 and "candidates" in err["error"], err

            deploy({**changed, "broken": {"input_per_mtok": 1.0}})  # in place: refused, the offer stays
            wait_for(lambda: (client.get("/v1/stats")[1].get("offer") or {}).get("refused"), "the refusal")
            st, stats = client.get("/v1/stats")
            assert "models.broken.output_per_mtok: missing" in stats["offer"]["refused"], stats
            assert list(offered()) == list(changed) and "error" not in stats["trainer"], stats
            assert stats["offer"]["decision_shrinkage"] == [1.0, "none"], stats  # the checkpoint's own: off
            assert stats["offer"]["decision_cost_multiplier"] == 1.0, stats  # likewise
        finally:
            stop.set()
            loader.join()
        assert not failures, failures[:3]
        assert len(replicas) == 1, replicas  # reconfigured in place: one router replica answered throughout
        for bad, field in [({}, "models: the model set is empty"),
                           ({"x": {"input_per_mtok": 0, "output_per_mtok": 0}}, "models.x: input_per_mtok")]:
            with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
                app_builder({**args, "models": bad})  # in `args`: refused before anything is deployed
    finally:
        stop_serve()
