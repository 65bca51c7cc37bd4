"""Ray Serve over real HTTP on 127.0.0.1: routing, feedback, continuous training, restarts.

The "users" are simulated from the synthetic world's full-information table: for each routed
prompt they report the chosen model's true score and cost, exactly what a live system would log.
"""
from __future__ import annotations

import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from barp_ray.config import apply_overrides, load_config
from barp_ray.data.prepare import split_tables
from barp_ray.training.run import train
from envs.reward import reward

W = (0.8, 0.2)
UPSTREAM_KEY = "sk-upstream-" + "fedcba9876543210"


from http_client import TOKEN, Client, free_port as _free_port, stored_reward_ids  # noqa: E402
from conftest import stop_serve  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A deliberately under-trained checkpoint (2 iterations) so feedback has room to improve it. It reads
    the prompts' text statistics too (`encoder.text_stats`), so every test here serves and trains through
    them; tests/test_colocated.py serves a checkpoint without."""
    from conftest import start_local_ray

    start_local_ray()
    root = tmp_path_factory.mktemp("serve")
    (root / "token").write_text(TOKEN + "\n")
    cfg = apply_overrides(
        load_config(None),
        ["data.synthetic_prompts=1200", "training.iterations=2", "training.rounds_per_iteration=256",
         "training.lr=0.0001", "encoder.text_stats=true", f"output.checkpoint_dir={root / 'ckpt'}"],
    )
    res = train(cfg, progress=False)
    train_t, test_t = split_tables(cfg.data)
    from openai_upstream import Upstream

    upstream = Upstream(api_key=UPSTREAM_KEY)
    (root / "upstream_key").write_text(UPSTREAM_KEY + "\n")
    # every model but one has an upstream; the missing one exercises the 502 path
    upstreams = {m: {"base_url": upstream.base_url, "api_key_file": str(root / "upstream_key")} for m in train_t.models[:-1]}
    yield {"root": root, "checkpoint": res.checkpoint, "train": train_t, "test": test_t,
           "upstream": upstream, "upstreams": upstreams}
    upstream.close()


def deploy(world, port, limits=None, **trainer):
    from ray import serve

    from serve.app import app_builder

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "checkpoint": world["checkpoint"],
        "log_dir": str(world["root"] / "log"),
        "weights_poll_s": 0.2,
        "upstreams": world["upstreams"],
        "upstream_timeout_s": 3,
        "auth": {"token_file": str(world["root"] / "token")},
        "limits": limits or {"max_prompt_tokens": 64, "long_prompt": "truncate", "max_body_bytes": 16384},
        "topology": "split",  # the ingress and its RouterModel replicas apart (the colocated ones: tests/test_colocated.py)
        "router_autoscaling": {"min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 8},
        "trainer": {"state_dir": str(world["root"] / "trainer"), "min_batch": 100, "poll_s": 0.2, "enabled": False,
                    **trainer},
    }
    serve.run(app_builder(args), name="barp", route_prefix="/")
    return Client(port)


@pytest.fixture(scope="module")
def client(world):
    from ray import serve

    c = deploy(world, _free_port())
    yield c
    stop_serve()


def simulate_rounds(client, table, rows, mode="sample"):
    """Route each prompt, then post the chosen model's true outcome as feedback; returns rewards."""
    models = list(table.models)

    def one(i):
        st, r = client.post("/v1/route", {"prompt": table.prompts[i], "preference": {"quality": W[0], "cost": W[1]}, "mode": mode})
        assert st == 200, r
        a = models.index(r["model"])
        st, f = client.post("/v1/feedback", {"request_id": r["request_id"], "score": float(table.scores[i, a]), "cost": float(table.costs[i, a])})
        assert st == 200, f
        return f["reward"]

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, rows))


def greedy_reward(client, table, rows, tau):
    models = list(table.models)

    def one(i):
        st, r = client.post("/v1/route", {"prompt": table.prompts[i], "preference": list(W)[0]})
        assert st == 200, r
        a = models.index(r["model"])
        return float(reward(table.scores[i, a], table.costs[i, a], W[0], W[1], tau)), r["policy_version"]

    with ThreadPoolExecutor(16) as pool:
        out = list(pool.map(one, rows))
    return float(np.mean([o[0] for o in out])), {o[1] for o in out}


def test_the_service_port_is_haproxy_in_front_of_the_ingress_replica(client):
    """The shipped serving mode (serve/ray_env.py): HAProxy, not Serve's Python proxy, owns the
    HTTP port, and the RouterAPI replica answers on a port of its own behind it."""
    import psutil

    listening = {c.laddr.port: c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid}
    owner = psutil.Process(listening[client.port])
    assert owner.name() == "haproxy", owner.cmdline()
    ingress = [p for p in psutil.process_iter(["cmdline"]) if "RouterAPI" in " ".join(p.info["cmdline"] or [])]
    assert any(listening.get(c.laddr.port) == p.pid for p in ingress for c in p.net_connections("tcp")
               if c.status == psutil.CONN_LISTEN and 30000 <= c.laddr.port < 31000)
    assert client.get("/healthz")[0] == 200


def _batch_waits(replicas: set[str]) -> tuple[float, float]:
    """(batches that waited <= 2 ms, all batches) of `route_batch` on these RouterModel replicas, from
    Serve's own batch-wait histogram on Ray's metrics endpoint (which also keeps other apps' replicas
    from earlier in the session)."""
    quick = total = 0.0
    for name, series in _scrape("ray_serve_batch_wait_time_ms").items():
        for labels, value in series:
            if "route_batch" not in labels.get("function_name", "") or labels.get("replica") not in replicas:
                continue
            if name == "ray_serve_batch_wait_time_ms_count":
                total += value
            elif name == "ray_serve_batch_wait_time_ms_bucket" and labels.get("le") in ("2", "2.0"):
                quick += value
    return quick, total


def test_a_lone_route_does_not_wait_for_company(client):
    """The router batches routes, waiting up to batch_wait_timeout_s (5 ms) for a batch to fill;
    a route that finds its replica empty starts at once. First to route in the module, so every
    batch these replicas' histogram has seen is one of these sequential routes."""
    replicas = set()
    for i in range(20):
        st, r = client.post("/v1/route", {"prompt": f"a lone prompt {i}", "preference": 0.5})
        assert st == 200
        replicas.add(r["replica"])
    deadline, (quick, total) = time.time() + 60, (0.0, 0.0)
    while time.time() < deadline and total < 20:
        time.sleep(1)
        quick, total = _batch_waits(replicas)
    assert total >= 20 and quick >= 0.9 * total, (quick, total)


def test_route_response_shape(client, world):
    st, r = client.post("/v1/route", {"prompt": "What is the capital city of Kenya?", "preference": {"quality": 0.8, "cost": 0.2}})
    assert st == 200
    assert set(r) == {"request_id", "model", "probabilities", "propensity", "mode", "policy_version", "replica", "preference"}
    assert r["model"] in world["train"].models and r["preference"] == [0.8, 0.2]  # normalised, as routed
    assert math.isclose(sum(r["probabilities"].values()), 1.0, abs_tol=1e-5)
    st, r = client.post("/v1/route", {"prompt": "Write a Go function that reverses a linked list.", "preference": 0.3,
                                      "candidates": ["tiny-1b", "chat-8b"]})
    assert st == 200 and r["model"] in ("tiny-1b", "chat-8b") and r["preference"] == [0.3, 0.7]
    assert sum(v for k, v in r["probabilities"].items() if k not in ("tiny-1b", "chat-8b")) == 0
    st, models = client.get("/v1/models")
    assert st == 200 and {m["id"] for m in models["models"]} >= set(world["train"].models) | {"barp-auto"}
    assert client.get("/healthz") == (200, {"status": "ok", "models": 6})
    st, schema = client.get("/openapi.json")
    assert st == 200 and "/v1/route" in schema["paths"] and "/v1/feedback" in schema["paths"]


def test_a_preference_pair_routes_as_the_same_weights_written_as_an_object(client):
    """[w_q, w_c] is how the paper, the configs and the Python API write a preference; over HTTP it
    means what {quality, cost} means, normalised the same way."""
    prompt = "Summarise the causes of the French Revolution in three sentences."

    def served(*prefs):
        """The distribution each preference is served from, all under one policy version (the
        trainer may still be publishing updates from earlier tests' feedback)."""
        for _ in range(10):
            rows = [client.post("/v1/route", {"prompt": prompt, "preference": w}) for w in prefs]
            assert all(st == 200 for st, _ in rows), rows
            if len({r["policy_version"] for _, r in rows}) == 1:
                return [r["probabilities"] for _, r in rows]
        raise AssertionError("the policy version kept changing")

    pair, obj = served([0.9, 0.1], {"quality": 0.9, "cost": 0.1})
    assert pair == pytest.approx(obj, abs=1e-6)
    pair, obj, knob, far = served([0.6, 0.2], {"quality": 0.6, "cost": 0.2}, 0.75, [0.1, 0.9])
    assert pair == pytest.approx(obj, abs=1e-6) and pair == pytest.approx(knob, abs=1e-6)
    # the preference does reach the policy: this checkpoint has had two small steps, so far apart
    # preferences move its distribution by ~1e-3, against the 1e-6 within which equal ones agree
    assert pair != pytest.approx(far, abs=1e-4)
    st, r = client.post("/v1/route", {"prompt": prompt, "preference": "high"})
    assert st == 422 and r["error"].startswith("preference: expected {quality, cost}, a [w_q, w_c] pair"), r


@pytest.mark.parametrize(
    "path, body, status, field",
    [
        ("/v1/route", {}, 422, "prompt"),
        ("/v1/route", {"prompt": ""}, 422, "prompt"),
        ("/v1/route", {"prompt": 42}, 422, "prompt"),
        ("/v1/route", {"prompt": "hi", "preference": {"quality": 0, "cost": 0}}, 422, "preference"),
        ("/v1/route", {"prompt": "hi", "preference": True}, 422, "preference"),
        ("/v1/route", {"prompt": "hi", "preference": {"quality": -0.2, "cost": 1.2}}, 422, "preference"),
        ("/v1/route", {"prompt": "hi", "preference": 1.5}, 422, "preference"),
        ("/v1/route", {"prompt": "hi", "preference": "cheap"}, 422, "preference"),
        ("/v1/route", {"prompt": "hi", "preference": [0, 0]}, 422, "preference"),
        ("/v1/route", {"prompt": "hi", "preference": [0.5]}, 422, "preference"),
        ("/v1/route", {"prompt": "hi", "preference": [0.5, 1.5]}, 422, "preference"),
        ("/v1/route", {"prompt": "hi", "mode": "random"}, 422, "mode"),
        ("/v1/route", {"prompt": "hi", "candidates": ["gpt-9"]}, 422, "candidates"),
        ("/v1/route", {"prompt": "hi", "candidates": []}, 422, "candidates"),
        ("/v1/route", {"prompt": "hi", "temperature": 2}, 422, "temperature"),
        ("/v1/feedback", {"request_id": "does-not-exist", "score": 0.5, "cost": 0.0}, 404, "request_id"),
        ("/v1/feedback", {"request_id": "x", "score": 1.5, "cost": 0.0}, 422, "score"),
        ("/v1/feedback", {"request_id": "x", "score": 0.5, "cost": -1}, 422, "cost"),
        ("/v1/feedback", {"request_id": "x", "score": "good", "cost": 0}, 422, "score"),
        ("/v1/feedback", {"score": 0.5, "cost": 0}, 422, "request_id"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(client, path, body, status, field):
    st, r = client.post(path, body)
    assert st == status, r
    assert field in r["error"]


def test_non_finite_and_malformed_bodies(client):
    st, r = client.post("/v1/route", raw=b'{"prompt": "hi", "preference": NaN}')
    assert st == 422 and "preference" in r["error"]
    st, r = client.post("/v1/feedback", raw=b'{"request_id": "x", "score": Infinity, "cost": 0}')
    assert st == 422 and "score" in r["error"]
    st, r = client.post("/v1/route", raw=b"{not json")
    assert st == 422


def test_duplicate_feedback_counts_once(client, world):
    st, r = client.post("/v1/route", {"prompt": "Translate into French: hello", "preference": 0.5})
    body = {"request_id": r["request_id"], "score": 1.0, "cost": 0.0001}
    assert client.post("/v1/feedback", body)[0] == 200
    st, err = client.post("/v1/feedback", body)
    assert st == 409 and "already" in err["error"]
    assert stored_reward_ids(world["root"] / "log").count(r["request_id"]) == 1


def test_feedback_improves_the_served_policy_and_reaches_every_replica(client, world):
    train_t, test_t = world["train"], world["test"]
    from barp_ray.policy import RoutingPolicy

    tau = RoutingPolicy.load(world["checkpoint"]).tau
    eval_rows = np.arange(min(150, test_t.n))
    before, versions = greedy_reward(client, test_t, eval_rows, tau)
    assert versions == {0}

    rng = np.random.default_rng(0)
    for _ in range(3):
        simulate_rounds(client, train_t, rng.choice(train_t.n, size=400, replace=False))
        st, out = client.post("/v1/admin/train")
        assert st == 200, out
    st, stats = client.get("/v1/stats")
    version = stats["trainer"]["published_version"]
    assert version >= 3, stats

    # every replica picks the new weights up (they poll the trainer)
    import time

    seen: dict[str, int] = {}
    deadline = time.time() + 30
    while time.time() < deadline:
        for _ in range(20):
            st, r = client.post("/v1/route", {"prompt": "What is 2 + 2?", "preference": 0.8})
            seen[r["replica"]] = r["policy_version"]
        if len(seen) == 2 and set(seen.values()) == {version}:
            break
        time.sleep(0.3)
    assert len(seen) == 2 and set(seen.values()) == {version}, seen

    after, versions = greedy_reward(client, test_t, eval_rows, tau)
    assert versions == {version}
    print(f"served greedy reward before {before:.4f} after {after:.4f} (version {version})")
    assert after > before + 0.03


def test_restart_keeps_the_log_and_resumes_training(client, world):
    from ray import serve

    st, stats_before = client.get("/v1/stats")
    ids_before = stored_reward_ids(world["root"] / "log")
    serve.delete("barp")
    c = deploy(world, client.port)
    st, stats = c.get("/v1/stats")
    assert stats["log"] == stats_before["log"]
    assert stats["trainer"]["version"] == stats_before["trainer"]["version"]
    assert stats["trainer"]["offset"] == stats_before["trainer"]["offset"]
    assert stored_reward_ids(world["root"] / "log") == ids_before
    # training continues from the saved offset: only the new feedback is consumed
    simulate_rounds(c, world["train"], np.arange(100))
    st, out = c.post("/v1/admin/train")
    assert [u["version"] for u in out["updates"]] == [stats_before["trainer"]["version"] + 1]
    assert out["updates"][0]["records"] == 100
    ids = stored_reward_ids(world["root"] / "log")
    assert len(ids) == len(set(ids)) == len(ids_before) + 100


def test_settings_errors_name_the_field():
    from serve.settings import SettingsError, settings_from_args

    import yaml

    from ray.serve.schema import ServeDeploySchema

    for name in ("serve.yaml", "serve_split.yaml"):
        shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / name).read_text())
        ServeDeploySchema.model_validate(shipped)  # Ray Serve's own schema
        for app in shipped["applications"]:
            assert app["import_path"] == "serve.app:app_builder"
            settings_from_args(app["args"])  # the shipped serve config is valid

    for args, field in [
        ({"weights_poll_s": 0}, "weights_poll_s"),
        ({"trainer": {"min_batch": -1}}, "trainer.min_batch"),
        ({"trainer": {"anchor_weight": -1}}, "trainer.anchor_weight"),
        ({"trainer": {"anchor_fade": 0}}, "trainer.anchor_fade"),
        ({"exploration": {"epsilon": 1.5}}, "exploration.epsilon"),
        ({"feedback": {"on_missing": "ignore"}}, "feedback.on_missing"),
        ({"rollout": {"margin": -1}}, "rollout.margin"),
        ({"upstreams": {"m": "ftp://x"}}, "upstreams.m"),
        ({"upstreams": {"m": {"url": "http://x"}}}, "upstreams.m"),
        ({"upstreams": {"m": {"api_key_env": "K"}}}, "upstreams.m.base_url"),
        ({"upstream_retries": -1}, "upstream_retries"),
        ({"rollout": {"confidence": 1.0}}, "rollout.confidence"),
        ({"rollout": {"references": 0}}, "rollout.references"),
        ({"bogus": 1}, "bogus"),
        ({"auth": {"token_env": None}}, "auth"),
        ({"limits": {"long_prompt": "shorten"}}, "limits.long_prompt"),
        ({"limits": {"max_chat_body_bytes": 0}}, "limits.max_chat_body_bytes"),
        ({"topology": "sidecar"}, "topology"),
        ({"lone_route_threads": 1.5}, "lone_route_threads"),
        ({"embedding_cache": -1}, "embedding_cache"),
        ({"retention": {"keep_rewards": 3000}}, "retention.keep_rewards: must be at least trainer.window"),  # < what a restart reads back
        ({"retention": {"max_age_days": 0}}, "retention.max_age_days"),
        ({"retention": {"archive": ""}}, "retention.archive"),
        ({"retention": {"keep": 5}}, "retention"),
    ]:
        with pytest.raises(SettingsError, match=field.split(".")[-1]):
            settings_from_args(args)
    from serve.app import app_builder

    with pytest.raises(SettingsError, match="not a barp-ray checkpoint"):
        app_builder({"checkpoint": "/nonexistent/ckpt", "auth": {"disabled": True}})


def test_live_prices_are_checked_against_the_checkpoint_and_name_the_field():
    """Prices reach replicas as Serve user_config (reconfigure, no restart); a bad one is refused
    at deploy, naming the field, before anything changes."""
    from serve.settings import SettingsError, live_prices

    meta = {"models": ["a", "b"], "prices": {"a": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                                             "b": {"input_per_mtok": 5.0, "output_per_mtok": 5.0}},
            "config": {"policy": {"head": "price_aware"}}}
    assert live_prices({"b": {"input_per_mtok": 10, "output_per_mtok": 10}}, meta)["b"] == {
        "input_per_mtok": 10.0, "output_per_mtok": 10.0}
    assert live_prices(None, meta)["a"] == meta["prices"]["a"]
    for bad, field in [({"c": {"input_per_mtok": 1, "output_per_mtok": 1}}, "prices.c"),
                       ({"a": {"input_per_mtok": 1}}, "prices.a"),
                       ({"a": {"input_per_mtok": -1, "output_per_mtok": 1}}, "prices.a.input_per_mtok"),
                       ({"a": {"input_per_mtok": 0, "output_per_mtok": 0}}, "prices.a"),
                       (["a"], "prices")]:
        with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
            live_prices(bad, meta)
    with pytest.raises(SettingsError, match="does not read prices"):
        live_prices({"a": {"input_per_mtok": 1, "output_per_mtok": 1}}, {**meta, "config": {"policy": {"head": "concat"}}})


def test_live_context_windows_name_offered_models_and_whole_token_counts():
    from serve.settings import SettingsError, live_offer

    meta = {"models": ["a", "b"], "prices": {"a": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                                             "b": {"input_per_mtok": 5.0, "output_per_mtok": 5.0}},
            "config": {"policy": {"head": "model_conditioned"}}}
    assert live_offer({}, meta).context_windows == {}
    assert live_offer({"context_windows": {"a": 8192}}, meta).context_windows == {"a": 8192}
    new_model = {"models": {"b": {"input_per_mtok": 5, "output_per_mtok": 5}, "c": {"input_per_mtok": 1, "output_per_mtok": 1}}}
    assert live_offer({**new_model, "context_windows": {"c": 4096}}, meta).context_windows == {"c": 4096}
    for windows, field in [({"x": 10}, r"context_windows: unknown model\(s\) \['x'\]; offered: \['a', 'b'\]"),
                           ({"a": 0}, r"context_windows\.a: must be a positive whole number"),
                           ({"a": 8192.0}, r"context_windows\.a"), ({"a": True}, r"context_windows\.a"),
                           ({"a": "8k"}, r"context_windows\.a"), ([8192], "context_windows: must map")]:
        with pytest.raises(SettingsError, match=field):
            live_offer({"context_windows": windows}, meta)
    with pytest.raises(SettingsError, match=r"unknown model\(s\) \['a'\]"):  # a window for a model the live list dropped
        live_offer({**new_model, "context_windows": {"a": 10}}, meta)


def test_barp_check_serve_runs_the_deploy_checks_on_a_config_file_and_names_each_problem(world, tmp_path, monkeypatch, capsys):
    """`barp check-serve`: the shipped config file, pointed at a real checkpoint, passes with the API
    token in the environment and fails naming it without; a bad setting, a bad live offer on a
    deployment, and an offer given to the ingress but not to the trainer are each named by
    application, deployment and field; relative paths get a note. A KubeRay RayService manifest is
    checked by its serveConfigV2."""
    import copy

    import yaml

    from barp_ray.cli import main as barp

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "serve.yaml").read_text())

    def checked(edit=None, *flags) -> tuple[int, str]:
        config = copy.deepcopy(shipped)
        app = config["applications"][0]
        app["args"].update(checkpoint=str(world["checkpoint"]), log_dir=str(tmp_path / "log"))
        app["args"]["trainer"]["state_dir"] = str(tmp_path / "trainer")
        if edit:
            edit(app)
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        code = barp(["check-serve", str(path), *flags])
        return code, capsys.readouterr().out

    monkeypatch.setenv("BARP_API_TOKEN", TOKEN)
    code, out = checked()
    assert code == 0 and "ok:" in out and "note:" not in out, out
    monkeypatch.delenv("BARP_API_TOKEN")
    code, out = checked()
    assert code == 1 and "problem: applications[barp].args.auth.token_env ($BARP_API_TOKEN): no token" in out, out
    code, out = checked(None, "--no-environment")
    assert code == 0 and "not checked: the API" in out, out

    def bad_arg(app):
        app["args"]["failover"]["attempts"] = 0
        app["args"]["log_dir"] = "runs/here"

    code, out = checked(bad_arg, "--no-environment")
    assert code == 1 and "problem: applications[barp].args.failover.attempts: must be an integer >= 1" in out, out

    def relative(app):
        app["args"]["log_dir"] = "runs/here"

    code, out = checked(relative, "--no-environment")
    assert code == 0 and "note: applications[barp].args.log_dir: 'runs/here' is relative" in out, out
    code, out = checked(lambda app: app["args"].update(upstreams={"chat-8B": "http://127.0.0.1:9/v1"}), "--no-environment")
    assert code == 0 and "note: applications[barp].args.upstreams.chat-8B: not a model the checkpoint" in out, out

    offer = {"capabilities": {"chat-8b": ["vision"]}}

    def ingress_only(app):
        app["deployments"][0]["user_config"] = offer

    code, out = checked(ingress_only, "--no-environment")
    assert code == 1 and "the live offer differs between the deployments that read it" in out and "TrainerDeployment" in out, out

    def both(app, given=offer):
        app["deployments"][0]["user_config"] = given
        app["deployments"].append({"name": "TrainerDeployment", "user_config": given})

    code, out = checked(both, "--no-environment")
    assert code == 0, out
    code, out = checked(lambda app: both(app, {"capabilities": {"chat-8b": ["images"]}}), "--no-environment")
    assert code == 1 and "problem: applications[barp].deployments[RouterAPI].user_config.capabilities.chat-8b: must be a list" in out, out
    manifest = (Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "rayservice.yaml").read_text()
    (tmp_path / "rayservice.yaml").write_text(manifest.replace("/mnt/barp/checkpoints/barp-llmrouter", str(world["checkpoint"])))
    assert barp(["check-serve", str(tmp_path / "rayservice.yaml"), "--no-environment"]) == 0, capsys.readouterr().out  # its serveConfigV2
    capsys.readouterr()
    checkpoint = str(world["checkpoint"])
    for app, field in [(7, "applications[#0]: must be a mapping"),
                       ({"import_path": "serve.app:app_builder", "args": [1]}, "applications[#0].args: must be a mapping"),
                       ({"import_path": "serve.app:app_builder", "args": {"checkpoint": checkpoint}, "deployments": "RouterAPI"},
                        "applications[#0].deployments: must be a list"),
                       ({"import_path": "serve.app:app_builder", "args": {"checkpoint": checkpoint},
                         "deployments": [{"name": "RouterAPI", "user_config": "prices"}]},
                        "applications[#0].deployments[RouterAPI].user_config: must be a mapping")]:
        (tmp_path / "odd.yaml").write_text(yaml.safe_dump({"applications": [app]}))
        assert barp(["check-serve", str(tmp_path / "odd.yaml"), "--no-environment"]) == 1
        assert f"problem: {field}" in capsys.readouterr().out
    (tmp_path / "broken.yaml").write_text("applications: [")
    assert barp(["check-serve", str(tmp_path / "broken.yaml")]) == 2 and "cannot read it as YAML" in capsys.readouterr().err


def test_live_capabilities_name_offered_models_and_known_features():
    from serve.settings import SettingsError, live_offer

    meta = {"models": ["a", "b"], "prices": {}, "config": {"policy": {"head": "model_conditioned"}}}
    assert live_offer({}, meta).capabilities == {}
    assert live_offer({"capabilities": {"a": ["vision", "tools", "vision"], "b": []}}, meta).capabilities == \
        {"a": ("tools", "vision"), "b": ()}
    for capabilities, field in [({"x": []}, r"capabilities: unknown model\(s\) \['x'\]; offered: \['a', 'b'\]"),
                                ({"a": ["images"]}, r"capabilities\.a: must be a list of \['vision', 'audio', 'tools'"),
                                ({"a": "vision"}, r"capabilities\.a"), ({"a": [1]}, r"capabilities\.a"),
                                (["vision"], "capabilities: must map")]:
        with pytest.raises(SettingsError, match=field):
            live_offer({"capabilities": capabilities}, meta)


def test_a_live_model_list_needs_a_model_conditioned_checkpoint_and_names_the_field():
    from serve.settings import SettingsError, live_offer

    meta = {"models": ["a", "b"], "sizes": {"a": 7.0},
            "prices": {"a": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}, "b": {"input_per_mtok": 5.0, "output_per_mtok": 5.0}},
            "config": {"policy": {"head": "model_conditioned"}}}
    offer = live_offer({"prices": {"b": {"input_per_mtok": 10, "output_per_mtok": 10}}}, meta)
    assert offer.models == ("a", "b") and offer.blended() == [3.0, 20.0] and offer.cards()[0].size_b == 7.0
    offer = live_offer({"models": {"b": {"input_per_mtok": 5, "output_per_mtok": 5}, "new": {"input_per_mtok": 0.1, "output_per_mtok": 0.2, "size_b": 8}}}, meta)
    assert offer.models == ("b", "new") and offer.cards()[1].size_b == 8.0
    for config, field in [({"models": {"x": {"input_per_mtok": 1, "output_per_mtok": 1}}, "prices": {"a": {"input_per_mtok": 1, "output_per_mtok": 1}}}, "prices: give"),
                          ({"models": []}, "models: must be a mapping"),
                          ({"colour": 1}, "user_config: unknown key"),
                          ({"models": {"x": {"input_per_mtok": "1", "output_per_mtok": 1}}}, "models.x.input_per_mtok")]:
        with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
            live_offer(config, meta)
    with pytest.raises(SettingsError, match="models: this checkpoint's policy head 'price_aware'"):
        live_offer({"models": {"a": {"input_per_mtok": 1, "output_per_mtok": 1}}}, {**meta, "config": {"policy": {"head": "price_aware"}}})


def test_decision_shrinkage_is_a_live_setting_checked_by_name_and_applied_to_the_served_policy(world):
    """Any checkpoint of a decision-head policy carries the average training prompt, so serving can
    turn the decision shrinkage on (or off) live, as the replicas and the trainer apply an offer."""
    import torch

    from barp_ray.policy import RoutingPolicy, read_meta
    from serve.app import app_builder
    from serve.settings import SettingsError, live_offer

    meta = read_meta(world["checkpoint"])
    module = RoutingPolicy.load(world["checkpoint"]).module
    e = torch.nn.functional.normalize(torch.randn(16, meta["embedding_dim"]), dim=-1)
    w = torch.tensor([[0.7, 0.3]]).expand(16, 2)
    assert live_offer({}, meta).decision_shrinkage == (1.0, "none")  # not set: the checkpoint's own (off here)
    before = module.action_probabilities(e, w)
    assert not torch.allclose(before, before[:1].expand_as(before), atol=1e-4)
    live_offer({"decision_shrinkage": 0}, meta).apply(module)  # every prompt decided as the average one
    p = module.action_probabilities(e, w)
    assert torch.allclose(p, p[:1].expand_as(p), atol=1e-5)
    live_offer({}, meta).apply(module)  # the key removed: back to the checkpoint's own
    assert torch.allclose(module.action_probabilities(e, w), before)
    assert live_offer({"decision_shrinkage": 1, "decision_shrinkage_gate": "cost"}, meta).decision_shrinkage == (1.0, "cost")
    ood = {**meta, "config": {"policy": {"head": "cost_aware", "decision_shrinkage": 0.5}}}
    assert live_offer({}, ood).decision_shrinkage == (0.5, "none")
    for config, field in [({"decision_shrinkage": 1.5}, "decision_shrinkage: must be a number"),
                          ({"decision_shrinkage": "half"}, "decision_shrinkage: must be a number"),
                          ({"decision_shrinkage": True}, "decision_shrinkage: must be a number"),
                          ({"decision_shrinkage": 0.5, "decision_shrinkage_gate": "price"}, "decision_shrinkage_gate: must be"),
                          ({"decision_shrinkage_gate": "cost"}, "decision_shrinkage_gate: gates")]:
        with pytest.raises(SettingsError, match=field):
            live_offer(config, meta)
    with pytest.raises(SettingsError, match="decision_shrinkage: a model_conditioned"):
        live_offer({"decision_shrinkage": 0.5}, {**meta, "config": {"policy": {"head": "model_conditioned"}}})
    with pytest.raises(SettingsError, match="decision_shrinkage: must be a number"):
        app_builder({"checkpoint": world["checkpoint"], "auth": {"disabled": True}, "decision_shrinkage": 2})


def test_decision_cost_multiplier_is_a_live_setting_checked_by_name_and_applied_to_the_served_policy(world, tmp_path):
    """The price-charging multiplier of the decision (`policy.decision_cost_multiplier`) is a serving
    setting like the shrinkage: set live, it moves routing toward the cheaper models at once; removed,
    the checkpoint's own returns. It needs a price head, so a small cost_aware checkpoint is trained here."""
    import torch

    from barp_ray.policy import RoutingPolicy, read_meta
    from serve.app import app_builder
    from serve.settings import SettingsError, live_offer

    cfg = apply_overrides(load_config(None), ["data.synthetic_prompts=600", "training.iterations=1", "training.rounds_per_iteration=256",
                                              "policy.head=cost_aware", f"output.checkpoint_dir={tmp_path / 'ckpt'}"])
    checkpoint = train(cfg, progress=False).checkpoint
    meta = read_meta(checkpoint)
    module = RoutingPolicy.load(checkpoint).module
    e = torch.nn.functional.normalize(torch.randn(64, meta["embedding_dim"]), dim=-1)
    w = torch.tensor([[0.6, 0.4]]).expand(64, 2)
    assert live_offer({}, meta).decision_cost_multiplier == 1.0  # not set: the checkpoint's own (off here)
    before = module.action_probabilities(e, w)
    live_offer({"decision_cost_multiplier": 50}, meta).apply(module)
    after = module.action_probabilities(e, w)
    cost = module._known_cost({}) if module.head == "cost_aware" else module.log_price
    assert float((after * cost).sum(-1).mean()) < float((before * cost).sum(-1).mean())  # the expected price falls
    live_offer({}, meta).apply(module)  # the key removed: back to the checkpoint's own
    assert torch.allclose(module.action_probabilities(e, w), before)
    ood = {**meta, "config": {"policy": {"head": "cost_aware", "decision_cost_multiplier": 3.0}}}
    assert live_offer({}, ood).decision_cost_multiplier == 3.0
    for config in ({"decision_cost_multiplier": 0}, {"decision_cost_multiplier": "x"}, {"decision_cost_multiplier": True}):
        with pytest.raises(SettingsError, match="decision_cost_multiplier: must be a number"):
            live_offer(config, meta)
    with pytest.raises(SettingsError, match="decision_cost_multiplier: scales the known price term"):
        live_offer({"decision_cost_multiplier": 2}, read_meta(world["checkpoint"]))  # the world's concat head has none
    with pytest.raises(SettingsError, match="decision_cost_multiplier: must be a number"):
        app_builder({"checkpoint": checkpoint, "auth": {"disabled": True}, "decision_cost_multiplier": -1})


def test_a_missing_provider_key_fails_the_deploy(world):
    import os

    from serve.app import app_builder
    from serve.settings import SettingsError

    os.environ.pop("BARP_TEST_MISSING_KEY", None)
    ckpt = world["checkpoint"]
    with pytest.raises(SettingsError, match=r"upstreams.m.api_key_env: \$BARP_TEST_MISSING_KEY is not set"):
        app_builder({"checkpoint": ckpt, "auth": {"disabled": True},
                     "upstreams": {"m": {"base_url": "http://127.0.0.1:1/v1", "api_key_env": "BARP_TEST_MISSING_KEY"}}})


def test_openai_compatible_chat_routes_and_forwards(client, world):
    up = world["upstream"]
    before = sum(up.calls.values())
    body = {"model": "barp-auto", "messages": [{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": "What is the capital city of Chile?"}],
            "barp": {"preference": 0.2, "candidates": list(world["upstreams"])}}
    st, r = client.post("/v1/chat/completions", body)
    assert st == 200, r
    chosen = r["barp"]["model"]
    assert chosen in world["upstreams"]
    assert r["model"] == chosen and r["choices"][0]["message"]["content"] == f"answer from {chosen}"
    assert sum(up.calls.values()) == before + 1 and up.calls[chosen] >= 1
    # the routed chat request can be rewarded like any other
    st, f = client.post("/v1/feedback", {"request_id": r["barp"]["request_id"], "score": 1.0, "cost": 0.0002})
    assert st == 200, f
    # a concrete model name passes straight through
    st, r = client.post("/v1/chat/completions", {"model": "chat-8b", "messages": [{"role": "user", "content": "hi"}]})
    assert st == 200 and r["model"] == "chat-8b" and "barp" not in r


def _openai(client, token=TOKEN):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{client.port}/v1", api_key=token or "none", max_retries=0, timeout=30)


def test_the_official_openai_client_streams_and_not_and_can_reward_either(client, world):
    up = world["upstream"]
    candidates = {"candidates": list(world["upstreams"]), "preference": 0.5}
    oa = _openai(client)
    messages = [{"role": "user", "content": "Name a prime number."}]
    done = oa.chat.completions.create(model="barp-auto", messages=messages, extra_body={"barp": candidates})
    chosen = done.barp["model"]
    assert done.model == chosen and done.choices[0].message.content == f"answer from {chosen}"
    raw = oa.chat.completions.with_raw_response.create(model="barp-auto", messages=messages, stream=True,
                                                        temperature=0.3, extra_body={"barp": candidates})
    request_id = raw.headers["x-barp-request-id"]
    chunks = list(raw.parse())
    assert chunks[0].barp["request_id"] == request_id  # the first chunk carries it too
    model = chunks[0].barp["model"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"answer from {model}"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the upstream got the provider key and the client's own fields, not barp's
    assert up.server.seen_auth[-1] == f"Bearer {UPSTREAM_KEY}"
    assert up.server.bodies[-1]["temperature"] == 0.3 and "barp" not in up.server.bodies[-1]
    for rid in (done.barp["request_id"], request_id):
        st, f = client.post("/v1/feedback", {"request_id": rid, "score": 1.0, "cost": 0.0001})
        assert st == 200, f
    # this endpoint's own errors read as the providers' do: message, type, param
    from openai import UnprocessableEntityError

    with pytest.raises(UnprocessableEntityError) as refused:
        oa.chat.completions.create(model="gpt-5", messages=messages)
    assert refused.value.type == "invalid_request_error" and refused.value.param == "model", refused.value.body
    assert refused.value.body["message"].startswith("model: must be 'barp-auto' or one of")
    # the model list, as OpenAI clients and chat front-ends read it
    listed = {m.id: m for m in oa.models.list()}
    assert set(listed) == {*world["train"].models, "barp-auto"} and listed["barp-auto"].object == "model", listed


def test_chat_needs_the_token_by_default_and_upstream_failures_are_clear(client, world):
    from openai import AuthenticationError

    with pytest.raises(AuthenticationError):
        _openai(client, token=None).chat.completions.create(model="barp-auto", messages=[{"role": "user", "content": "hi"}])
    model = next(iter(world["upstreams"]))
    for text, status, words in (("upstream-fail", 502, "HTTP 500"), ("upstream-hang", 504, "within 3 s")):
        for stream in (False, True):
            st, r = client.post("/v1/chat/completions", {"model": model, "stream": stream,
                                                         "messages": [{"role": "user", "content": text}]})
            assert st == status and words in r["error"]["message"] and UPSTREAM_KEY not in str(r), (text, stream, r)


def test_a_client_that_leaves_mid_stream_closes_the_upstream_call(client, world):
    import http.client
    import json as _json

    up = world["upstream"]
    before, completed = len(up.server.disconnects), up.server.completed_streams
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", _json.dumps({
        "model": "barp-auto", "stream": True, "messages": [{"role": "user", "content": "upstream-slow please"}],
        "barp": {"candidates": list(world["upstreams"])}}), {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("x-barp-request-id")
    assert resp.readline().startswith(b"data: ")  # streaming has begun (the whole stream takes 10 s)
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.time() + 15
    while len(up.server.disconnects) == before and time.time() < deadline:
        time.sleep(0.2)
    assert len(up.server.disconnects) == before + 1 and up.server.completed_streams == completed


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}, 422, "model"),
        ({"model": "barp-auto", "messages": []}, 422, "messages"),
        ({"model": "barp-auto", "messages": [{"role": "system", "content": "x"}]}, 422, "messages"),
        ({"model": "barp-auto", "messages": [{"role": "user", "content": "hi"}], "barp": {"preference": 3}}, 422, "preference"),
        ({"model": "frontier-400b", "messages": [{"role": "user", "content": "hi"}]}, 422, "no upstream"),
        ({"model": "barp-auto", "messages": [{"role": "user", "content": "hi"}], "barp": {"candidates": ["frontier-400b"]}},
         422, "barp.candidates"),
    ],
)
def test_chat_errors(client, body, status, field):
    """In OpenAI's error shape, as the providers' own errors this endpoint passes through."""
    st, r = client.post("/v1/chat/completions", body)
    assert st == status, r
    assert field in r["error"]["message"] and r["error"]["type"] == "invalid_request_error", r


def test_auth_on_feedback_admin_and_stats(client):
    anon = Client(client.port, token=None)
    wrong = Client(client.port, token="not-the-token-at-all")
    st, r = anon.post("/v1/route", {"prompt": "hi there", "preference": 0.5})
    assert st == 200  # routing is open unless auth.require_for_route
    for c, msg in ((anon, "missing bearer token"), (wrong, "invalid bearer token")):
        st, err = c.post("/v1/feedback", {"request_id": r["request_id"], "score": 1.0, "cost": 0.0})
        assert st == 401 and msg in err["error"]
        assert c.post("/v1/admin/train")[0] == 401
        assert c.get("/v1/stats")[0] == 401
    st, err = client.post("/v1/feedback", {"request_id": r["request_id"], "score": 1.0, "cost": 0.0},
                          headers={"authorization": "Basic abc"})
    assert st == 401 and "Bearer" in err["error"]
    # the rejected attempts changed nothing: the right token still records it, once
    assert client.post("/v1/feedback", {"request_id": r["request_id"], "score": 1.0, "cost": 0.0})[0] == 200


def test_token_never_reaches_the_logs(client):
    client.post("/v1/route", {"prompt": "log check", "preference": 0.5})
    client.post("/v1/chat/completions", {"model": "barp-auto", "messages": [{"role": "user", "content": "upstream-fail"}]})
    client.get("/v1/stats")
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    for f in logs.rglob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            data = f.read_bytes()
            assert TOKEN.encode() not in data and UPSTREAM_KEY.encode() not in data, f


def test_internal_calls_leave_no_access_log_lines(client):
    """Replicas poll the trainer for weights several times a second; at INFO that was one log line
    per poll per replica. Internal deployments log no access lines; the HTTP ingress still does."""
    import ray

    client.post("/v1/route", {"prompt": "quiet please", "preference": 0.5})
    time.sleep(1.0)  # several weight polls (every 0.2 s)
    serve_logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs" / "serve"
    text = {f.name: f.read_text(errors="replace") for f in serve_logs.glob("replica_barp_*.log")}
    internal = {n: t for n, t in text.items() if "RouterAPI" not in n}
    assert internal and not [n for n, t in internal.items() if "get_weights" in t or " CALL " in t], list(internal)
    assert any("/v1/route" in t for n, t in text.items() if "RouterAPI" in n)


def test_the_openapi_schema_tells_the_truth_to_schemathesis(client, world):
    """schemathesis generates schema-valid and schema-violating requests for every operation and
    runs all its checks: no 5xx, every status documented, valid input accepted, invalid refused,
    responses matching their schemas. The model names are enums in the served schema."""
    import subprocess
    import sys

    st, schema = client.get("/openapi.json")
    comps = schema["components"]["schemas"]
    assert comps["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["barp-auto", *world["upstreams"]]
    # {quality, cost} weights are normalised, so any pair the schema allows is routable
    assert client.post("/v1/route", {"prompt": "hi", "preference": {"quality": 1, "cost": 1}})[0] == 200
    out = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
             "run", f"http://127.0.0.1:{client.port}/openapi.json", "--checks", "all",
         "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "15", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600)
    failures = re.findall(r"\[\d{3}\] [^\n]*\n\s*\n\s*`[^\n]{0,600}", out.stdout)  # each failure's status and answer
    assert out.returncode == 0 and "failure" not in out.stdout.split("SUMMARY")[-1].lower(), (failures, out.stdout[-4000:])


def _scrape(prefix: str = "ray_barp_") -> dict[str, list[tuple[dict, float]]]:
    """Ray's metrics endpoint on this node, parsed: metric name -> [(labels, value)] for the names
    that start with `prefix`."""
    import re
    import urllib.request

    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, list[tuple[dict, float]]] = {}
    for line in text.splitlines():
        m = re.match(rf'^({re.escape(prefix)}\w*)\{{(.*)\}} (\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def test_routing_metrics_reach_prometheus_with_sane_values(client, world):
    models = set(world["train"].models)
    # Ray's endpoint goes on exporting the last values of earlier modules' replicas (other model
    # sets) for a while: the route counters are checked on the series this test moved.
    before = {(name, tuple(sorted(labels.items()))): v for name, series in _scrape().items() for labels, v in series}

    def moved(name: str) -> list[tuple[dict, float]]:
        deltas = [(labels, v - before.get((name, tuple(sorted(labels.items()))), 0.0)) for labels, v in got.get(name, [])]
        return [(labels, d) for labels, d in deltas if d > 0]

    ids = []
    for i in range(12):
        st, r = client.post("/v1/route", {"prompt": f"metrics prompt {i}", "preference": 0.5,
                                          "mode": "greedy" if i % 2 else "explore"})
        assert st == 200
        ids.append(r["request_id"])
    for rid in ids:
        assert client.post("/v1/feedback", {"request_id": rid, "score": 0.75, "cost": 0.0001})[0] == 200
    assert client.post("/v1/feedback", {"request_id": ids[0], "score": 0.75, "cost": 0.0001})[0] == 409
    assert client.post("/v1/feedback", {"request_id": "nope", "score": 0.75, "cost": 0.0001})[0] == 404
    time.sleep(2.1)  # the trainer's max_wait_s: then an update runs on what is pending
    assert client.post("/v1/admin/train")[0] == 200
    need = ("ray_barp_routes_total", "ray_barp_feedback_total", "ray_barp_feedback_delay_seconds_count",
            "ray_barp_reward_recent_mean", "ray_barp_score_recent_mean", "ray_barp_policy_version",
            "ray_barp_trainer_updates_total", "ray_barp_trainer_published_version")
    deadline, got = time.time() + 60, {}
    while time.time() < deadline:
        got = _scrape()
        outcomes = {labels.get("outcome") for labels, _ in got.get("ray_barp_feedback_total", [])}
        replicas = {labels.get("replica") for labels, _ in got.get("ray_barp_policy_version", [])}
        if (all(n in got for n in need) and {"accepted", "duplicate", "unknown_request"} <= outcomes and len(replicas) >= 2
                and sum(v for _, v in moved("ray_barp_routes_total")) >= 12):  # this test's routes exported
            break
        time.sleep(2)
    assert all(n in got for n in need), sorted(got)

    routes = moved("ray_barp_routes_total")
    assert {labels["model"] for labels, _ in routes} <= models and {labels["mode"] for labels, _ in routes} >= {"greedy", "explore"}
    total = sum(v for _, v in routes)
    assert total >= 12 and sum(v for _, v in moved("ray_barp_routes_explored_total")) <= total
    by_outcome = {labels["outcome"]: v for labels, v in got["ray_barp_feedback_total"]}
    assert by_outcome["accepted"] >= 12 and by_outcome["duplicate"] >= 1 and by_outcome["unknown_request"] >= 1
    assert sum(v for _, v in got["ray_barp_feedback_delay_seconds_count"]) >= 12
    assert all(-1 <= v <= 1 for _, v in got["ray_barp_reward_recent_mean"])
    assert all(0 <= v <= 1 for _, v in got["ray_barp_score_recent_mean"])
    versions = got["ray_barp_policy_version"]
    assert len({labels.get("replica") for labels, _ in versions}) >= 2 and all(v >= 0 for _, v in versions)
    assert sum(v for _, v in got["ray_barp_trainer_updates_total"]) >= 1


def test_size_limits(client):
    st, err = client.post("/v1/route", {"prompt": "x" * 20000})
    assert st == 413 and "body" in err["error"]
    st, r = client.post("/v1/route", {"prompt": " ".join(["word"] * 500), "preference": 0.5})
    assert st == 200  # truncated to max_prompt_tokens, then routed
    st, err = client.post("/v1/route", raw=b'{"prompt": "hi"}', headers={"content-length": "99999999"})
    assert st == 413


def test_text_statistics_read_the_whole_prompt_even_when_the_encoder_reads_a_cut_one(client, world, tmp_path):
    """Training computed them on whole prompts; a prompt over the token limit is cut for the encoder, and
    statistics of the cut text would tell the policy a long passage was a short one."""
    import json
    import shutil

    from barp_ray.encoder import encode
    from barp_ray.policy import CheckpointError, RoutingPolicy, read_meta
    from barp_ray.prompt_stats import NAMES, text_stats
    from serve.feedback_store import RewardReader, decode_vector

    meta = read_meta(world["checkpoint"])
    assert meta["text_stats"] == list(NAMES) and meta["embedding_dim"] == 384 + len(NAMES)
    prompt = "Which number is prime?\n" + "\n".join(f"({c}) {n}" for c, n in zip("ABCD", (21, 33, 37, 51))) + \
        "\n" + " ".join(["word"] * 300)
    st, r = client.post("/v1/route", {"prompt": prompt, "preference": 0.5})
    assert st == 200, r
    st, f = client.post("/v1/feedback", {"request_id": r["request_id"], "score": 1.0, "cost": 0.001})
    assert st == 200 and f["accepted"], f
    # chat's last user message, cut for the router, travels whole: its statistics are the whole one's too
    st, c = client.post("/v1/chat/completions", {"model": "barp-auto", "messages": [{"role": "user", "content": prompt}],
                                                  "barp": {"preference": 0.5, "candidates": list(world["upstreams"])}})
    assert st == 200, c
    st, f = client.post("/v1/feedback", {"request_id": c["barp"]["request_id"], "score": 1.0, "cost": 0.001})
    assert st == 200 and f["accepted"], f
    reader = RewardReader(world["root"] / "log")
    rows = {row["request_id"]: row for row in reader.after(0, 1_000_000)}
    reader.close()
    whole, cut = text_stats([prompt])[0], text_stats([prompt[:300]])[0]
    for rid in (r["request_id"], c["barp"]["request_id"]):
        seen = decode_vector(rows[rid]["embedding"])
        assert np.allclose(seen[-len(NAMES):], whole, atol=1e-6) and not np.allclose(whole, cut)
    assert whole[NAMES.index("log_choice_lines")] > 1  # four "(A)"-style option lines

    policy = RoutingPolicy.load(world["checkpoint"])  # the library reads prompts the same way
    x = policy.observe(["What is 2 + 2?", prompt])
    assert x.shape == (2, meta["embedding_dim"])
    assert np.allclose(x[:, :384], encode(["What is 2 + 2?", prompt], policy.encoder), atol=1e-6)
    assert np.allclose(x[1, 384:], whole)
    bad = tmp_path / "other_stats"
    shutil.copytree(world["checkpoint"], bad)
    (bad / "barp_meta.json").write_text(json.dumps({**meta, "text_stats": ["log_chars", "emoji_share"]}))
    with pytest.raises(CheckpointError, match="text_stats: the checkpoint reads"):
        RoutingPolicy.load(bad)


def test_bad_checkpoint_is_refused_and_old_weights_stay(client, world, tmp_path):
    st, before = client.get("/v1/stats")
    st, err = client.post("/v1/admin/load_checkpoint", {"path": str(tmp_path)})
    assert st == 422 and "not a barp-ray checkpoint" in err["error"]
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(world["checkpoint"], broken)
    (broken / "learner_group" / "learner" / "rl_module" / "default_policy" / "module_state.pkl").write_bytes(b"garbage")
    st, err = client.post("/v1/admin/load_checkpoint", {"path": str(broken)})
    assert st == 422 and "cannot load checkpoint" in err["error"]
    blind = tmp_path / "blind"  # same network, but it would read prompts without the text statistics
    shutil.copytree(world["checkpoint"], blind)
    meta = json.loads((blind / "barp_meta.json").read_text())
    (blind / "barp_meta.json").write_text(json.dumps({**meta, "text_stats": []}))
    st, err = client.post("/v1/admin/load_checkpoint", {"path": str(blind)})
    assert st == 422 and "text_stats" in err["error"], err
    st, after = client.get("/v1/stats")
    assert after["trainer"]["version"] == before["trainer"]["version"]
    st, r = client.post("/v1/route", {"prompt": "still serving?", "preference": 0.5})
    assert st == 200 and r["policy_version"] == before["trainer"]["version"]
    # a dry run judges on the held-back rewards (if there are enough yet) and publishes nothing
    st, dry = client.post("/v1/admin/load_checkpoint", {"path": world["checkpoint"], "mode": "dry_run"})
    assert (st == 200 and dry["published"] is False and dry["estimate"]["n"] > 0) or \
        (st == 409 and "held-back rewards so far" in dry["error"]), dry
    assert client.get("/v1/stats")[1]["trainer"]["version"] == before["trainer"]["version"]
    # a good checkpoint is adopted as the next version
    st, ok = client.post("/v1/admin/load_checkpoint", {"path": world["checkpoint"]})
    assert st == 200 and ok["policy_version"] == before["trainer"]["version"] + 1 and ok["published"] is True


def test_missing_token_source_fails_at_deploy(world, monkeypatch):
    from serve.app import app_builder
    from serve.settings import SettingsError

    monkeypatch.delenv("BARP_TEST_UNSET_TOKEN", raising=False)
    with pytest.raises(SettingsError, match="BARP_TEST_UNSET_TOKEN"):
        app_builder({"checkpoint": world["checkpoint"], "auth": {"token_env": "BARP_TEST_UNSET_TOKEN"}})
    monkeypatch.setenv("BARP_TEST_UNSET_TOKEN", "short")
    with pytest.raises(SettingsError, match="shorter than 16"):
        app_builder({"checkpoint": world["checkpoint"], "auth": {"token_env": "BARP_TEST_UNSET_TOKEN"}})


def test_a_checkpoint_under_a_storage_uri_is_accepted_at_deploy(world, tmp_path):
    """Serving reads the checkpoint's metadata through pyarrow.fs, as it loads the weights, so a
    `file://` (or `s3://`) checkpoint builds the app; a URI with nothing there is refused in one line."""
    import shutil

    from serve.app import app_builder
    from serve.settings import SettingsError

    shutil.copytree(world["checkpoint"], tmp_path / "bucket" / "run-1")
    auth = {"token_file": str(world["root"] / "token")}
    app_builder({"checkpoint": f"file://{tmp_path / 'bucket' / 'run-1'}", "auth": auth})
    with pytest.raises(SettingsError, match="not a barp-ray checkpoint"):
        app_builder({"checkpoint": f"file://{tmp_path / 'bucket' / 'no-such-run'}", "auth": auth})



def test_the_python_client_routes_rates_and_withdraws_when_the_block_fails(client):
    """barp_ray.client against the live app: a decision rated in a `with` block; one whose block
    raises (the provider failed) is withdrawn, so later feedback for it is refused; refusals come
    back as RouterError with the service's message; an unreachable service too, after retries."""
    from barp_ray.client import RouterClient, RouterError

    router = RouterClient(f"http://127.0.0.1:{client.port}", token=TOKEN)
    with router.route("What is 2 + 2?", preference=[0.9, 0.1], mode="greedy", max_latency_s=30) as d:
        out = d.feedback(score=1.0, cost=0.0001, latency_s=0.25)
    tau = client.get("/v1/models")[1]["tau"]
    assert d.done == "feedback" and out["request_id"] == d.request_id and out["reward"] == pytest.approx(0.9 - 0.1 * min(0.0001 / tau, 1))
    assert d.preference == pytest.approx([0.9, 0.1]) and d.propensity == 1.0 and d.mode == "greedy"

    class ProviderDown(Exception):
        pass

    with pytest.raises(ProviderDown):
        with router.route("What is 3 + 3?") as failed:
            raise ProviderDown
    assert failed.done == "withdrawn"
    st, r = client.post("/v1/feedback", {"request_id": failed.request_id, "score": 1.0, "cost": 0.0})
    assert st == 404 and "withdrawn" in r["error"], r
    with pytest.raises(RouterError) as e:
        router.route("x", preference=1.5)
    assert e.value.status == 422 and e.value.message.startswith("preference"), e.value
    with pytest.raises(RouterError) as e:
        RouterClient(f"http://127.0.0.1:{client.port}", token="not-a-token-0123456789").route("x").feedback(1.0, 0.0)
    assert e.value.status == 401, e.value
    with pytest.raises(RouterError) as e:
        RouterClient(f"http://127.0.0.1:{_free_port()}", retries=1, backoff_s=0.01).route("x")
    assert e.value.status == 0 and "no answer" in e.value.message


def test_a_route_cost_limit_leaves_out_the_models_its_estimate_prices_over_it(client, world):
    """`max_cost` prices each model for this request (the whole prompt's tokens x input price + the
    answer length x output price, at the served prices) and leaves out those over it; with none under
    it the cheapest answers alone, flagged. The decision keeps the narrowed candidates, so feedback
    on it trains as any restricted route does."""
    from barp_ray.encoder import count_tokens
    from barp_ray.policy import read_meta

    prices = client.get("/v1/models")[1]["models"]
    prices = {m["id"]: m["price_per_mtok"] for m in prices if m.get("price_per_mtok")}
    meta = read_meta(world["checkpoint"])
    prompt = "Summarise the quarterly report in three bullet points. " * 40  # longer than the encoder reads (256 tokens)
    tokens = int(count_tokens([prompt], meta["encoder"])[0])
    assert tokens > 256
    answer = meta["config"]["data"]["output_tokens"]

    def dollars(model, n_in=tokens, n_out=answer):
        p = prices[model]
        return (n_in * p["input_per_mtok"] + n_out * p["output_per_mtok"]) / 1e6

    ranked = sorted(prices, key=dollars)
    levels = sorted({dollars(m) for m in prices})
    limit = (levels[1] + levels[2]) / 2  # the models at the two lowest prices fit
    allowed = {m for m in prices if dollars(m) <= limit}
    assert 1 < len(allowed) < len(prices) - 1
    for _ in range(10):
        st, r = client.post("/v1/route", {"prompt": prompt, "preference": [1, 0], "max_cost": limit})
        assert st == 200 and r["model"] in allowed and "cost_unmet" not in r, r
        assert {m for m, q in r["probabilities"].items() if q > 0} == allowed, r  # explored among the allowed alone
    st, r = client.post("/v1/route", {"prompt": prompt, "max_cost": dollars(ranked[0]) / 2})
    assert st == 200 and r["model"] == ranked[0] and r["propensity"] == 1.0 and r["cost_unmet"] is True, r
    from barp_ray.client import RouterClient  # the Python client passes the limit and says when it was not met

    d = RouterClient(f"http://127.0.0.1:{client.port}", token=TOKEN).route(prompt, max_cost=dollars(ranked[0]) / 2)
    assert d.model == ranked[0] and d.cost_unmet and not d.latency_unmet
    d.withdraw()
    deadline = time.time() + 60  # both unmet routes counted for operators (Ray exports every few seconds)
    while sum(v for labels, v in _scrape().get("ray_barp_route_limits_unmet_total", []) if labels.get("limit") == "cost") < 2:
        assert time.time() < deadline, _scrape().get("ray_barp_route_limits_unmet_total")
        time.sleep(1)
    # the request's own token counts: nothing to pay, every model fits
    st, r = client.post("/v1/route", {"prompt": prompt, "max_cost": dollars(ranked[0]) / 2, "input_tokens": 0, "output_tokens": 0})
    assert st == 200 and "cost_unmet" not in r and all(q > 0 for q in r["probabilities"].values()), r
    # the whole prompt is priced, not the encoder's cut: a limit between the cut's price and the whole's leaves the model out
    cut = (dollars(ranked[0], n_in=256) + dollars(ranked[0])) / 2
    st, r = client.post("/v1/route", {"prompt": prompt, "candidates": [ranked[0], ranked[-1]], "max_cost": cut})
    assert st == 200 and r["cost_unmet"] is True, r
    for body, field in (({"max_cost": 0}, "max_cost"), ({"max_cost": -1}, "max_cost"), ({"max_cost": 0.1, "output_tokens": -3}, "output_tokens"),
                        ({"max_cost": "lots"}, "max_cost"), ({"max_cost": "0.1"}, "max_cost"), ({"max_latency_s": "2"}, "max_latency_s"),
                        ({"max_cost": 0.1, "input_tokens": "40"}, "input_tokens"), ({"max_cost": 0.1, "output_tokens": 2.5}, "output_tokens")):
        st, e = client.post("/v1/route", {"prompt": prompt, **body})
        assert st == 422 and e["error"].startswith(field), (body, e)


def test_a_route_latency_limit_reads_the_latency_clients_report_with_feedback(client):
    """Feedback may carry `latency_s` (the client's own measurement); the trainer keeps each model's
    recent p90 and passes it to the routers with the weights; a route's `max_latency_s` then leaves
    out the models reported slower (kept until they have min_samples reports), and with none fast
    enough routes to the fastest, flagged. The decision keeps the narrowed candidates."""
    st, models = client.get("/v1/models")
    slow, fast = [m["id"] for m in models["models"]][:2]
    for model, seconds in ((slow, 2.0), (fast, 0.1)):
        for i in range(6):  # min_samples (5) reports each, and one more
            st, r = client.post("/v1/route", {"prompt": f"Summarise report {i}.", "candidates": [model], "mode": "greedy"})
            assert st == 200, r
            st, f = client.post("/v1/feedback", {"request_id": r["request_id"], "score": 0.5, "cost": 0.0, "latency_s": seconds})
            assert st == 200, f
    deadline = time.time() + 60
    while True:  # this app's trainer runs on demand: it takes the reports in; the router replicas poll them with the weights
        assert client.post("/v1/admin/train")[0] == 200  # fewer than min_batch: taken once the oldest waited max_wait_s
        reported = client.get("/v1/stats")[1]["trainer"]["reported_latency_s"]
        if slow in reported and fast in reported:
            # an exploring route gives the slow model no chance at all once its replica knows: ten in a row
            routes = [client.post("/v1/route", {"prompt": "Summarise the report.", "candidates": [slow, fast],
                                                "max_latency_s": 1.0})[1] for _ in range(10)]
            if all(r["probabilities"][slow] == 0.0 for r in routes):
                break
        assert time.time() < deadline, reported
        time.sleep(0.5)
    assert reported[slow] == pytest.approx(2.0) and reported[fast] == pytest.approx(0.1), reported
    r = routes[-1]
    assert r["model"] == fast and r["mode"] == "explore" and "latency_unmet" not in r, r
    st, r = client.post("/v1/route", {"prompt": "Summarise the report.", "candidates": [slow], "max_latency_s": 1.0})
    assert st == 200 and r["model"] == slow and r["latency_unmet"] is True, r  # the only candidate, though too slow
    st, f = client.post("/v1/feedback", {"request_id": r["request_id"], "score": 0.5, "cost": 0.0, "latency_s": -1})
    assert st == 422 and f["error"].startswith("latency_s"), f


def test_a_trainer_whose_updates_fail_says_so_and_recovers(client, world):
    """Its state_dir gone (a volume unmounted, a path made a file): every update raises. The service
    keeps routing on the published weights; the admin call answers 503 with the error, not a
    traceback, and /v1/stats `trainer.failing` says since when and why, until an update succeeds. A
    checkpoint load that cannot publish changes nothing (it once left the rollout gate with no
    yardstick, and every later update failed: seen when the held-back rewards were enough to judge)."""
    import os
    import shutil

    state = world["root"] / "trainer"
    aside = world["root"] / "trainer-aside"
    os.rename(state, aside)
    state.write_text("not a directory")
    try:
        for attempt in (1, 2):
            simulate_rounds(client, world["train"], np.arange(100))  # min_batch: one update's worth
            st, out = client.post("/v1/admin/train")
            assert st == 503 and out["error"].startswith("trainer: the update failed (") and "Traceback" not in out["error"], out
            failing = client.get("/v1/stats")[1]["trainer"]["failing"]
            assert failing["updates_in_a_row"] == attempt and failing["last_error"] and failing["since"] <= time.time(), failing
        st, r = client.post("/v1/route", {"prompt": "Sum the first ten primes."})
        assert st == 200, r
        before = client.get("/v1/stats")[1]["trainer"]
        st, out = client.post("/v1/admin/load_checkpoint", {"path": world["checkpoint"]})  # publishing needs the state_dir too
        assert st == 503 and out["error"].startswith("trainer: publishing failed ("), out
        after = client.get("/v1/stats")[1]["trainer"]  # nothing moved: a failed load once left the gate no yardstick
        assert (after["version"], after["published_version"]) == (before["version"], before["published_version"]), after
    finally:
        state.unlink()
        shutil.move(str(aside), str(state))
    simulate_rounds(client, world["train"], np.arange(100))
    st, out = client.post("/v1/admin/train")
    assert st == 200 and out["updates"] and client.get("/v1/stats")[1]["trainer"]["failing"] is None, out
