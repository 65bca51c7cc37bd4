"""A live dollar budget for routes that send no preference (`serve/pacing.py`), over real HTTP.

The app is deployed declaratively and the budget edited in the deployments' `user_config`, as an
operator would; the weight the service picks is checked against `barp calibrate`'s scan of the
same prompts, so the two must agree exactly.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from http_client import TOKEN, Client, free_port
from conftest import stop_serve  # noqa: E402
from serve.settings import SettingsError, live_budget

PROMPTS = ["write a sql query that joins two tables", "a sonnet about the sea", "prove that sqrt(2) is irrational",
           "summarise this contract clause", "fix this python stack trace", "plan a three day trip to Rome"]
META = {"config": {"data": {"output_tokens": 256}}, "models": ["a", "b"]}
PRICED = {"a": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}, "b": {"input_per_mtok": 3.0, "output_per_mtok": 9.0}}


@pytest.mark.parametrize("raw, error", [
    ({"output_tokens": 10}, "budget: must be a mapping with dollars_per_1k"),
    ({"dollars_per_1k": -1}, "budget.dollars_per_1k: must be a positive number"),
    ({"dollars_per_1k": float("inf")}, "budget.dollars_per_1k: must be a positive number"),
    ({"dollars_per_1k": 1, "window": 0}, "budget.window: must be an integer >= 1"),
    ({"dollars_per_1k": 1, "every": 2.5}, "budget.every: must be an integer >= 1"),
    ({"dollars_per_1k": 1, "speed": 3}, "budget: unknown key(s) ['speed']"),
])
def test_a_bad_budget_is_refused_naming_the_field(raw, error):
    with pytest.raises(SettingsError) as e:
        live_budget({"budget": raw}, META, PRICED)
    assert str(e.value).startswith(error), e.value


def test_a_bad_client_budget_is_refused_naming_the_client_and_field():
    from serve.settings import live_client_budgets

    assert live_client_budgets({"client_budgets": {"a": {"dollars_per_1k": 2}}}, META, PRICED)["a"].dollars_per_1k == 2.0
    for raw, error in [({"a": {"dollars_per_1k": -1}}, "client_budgets.a.dollars_per_1k: must be a positive number"),
                       ({"a": {"every": 2}}, "client_budgets.a: must be a mapping with dollars_per_1k"),
                       ([1], "client_budgets: must map client names to budgets")]:
        with pytest.raises(SettingsError) as e:
            live_client_budgets({"client_budgets": raw}, META, PRICED)
        assert str(e.value).startswith(error), e.value


def test_a_budget_needs_every_price_and_an_answer_length():
    ok = live_budget({"budget": {"dollars_per_1k": 2}}, META, PRICED)
    assert (ok.dollars_per_1k, ok.output_tokens, ok.window, ok.every) == (2.0, 256, 512, 128)
    with pytest.raises(SettingsError, match=r"none for \['b'\]"):
        live_budget({"budget": {"dollars_per_1k": 2}}, META, {**PRICED, "b": {}})
    per_task = {"config": {"data": {"output_tokens": {"default": 256}}}}
    with pytest.raises(SettingsError, match="budget.output_tokens: required"):
        live_budget({"budget": {"dollars_per_1k": 2}}, per_task, PRICED)
    assert live_budget({"budget": {"dollars_per_1k": 2, "output_tokens": 100}}, per_task, PRICED).output_tokens == 100


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import train_small

    root = tmp_path_factory.mktemp("pacing")
    (root / "token").write_text(TOKEN + "\n")
    return {"root": root, "checkpoint": train_small(root, "training.iterations=30", "training.rounds_per_iteration=2048")}


def offline_pick(checkpoint: str, budget: float) -> tuple[float, float]:
    """What `barp calibrate`'s scan picks for PROMPTS at the service's exploration, on the pacer's grid."""
    from barp_ray.encoder import count_tokens
    from barp_ray.policy import RoutingPolicy
    from barp_ray.data.llmrouter import route_costs
    from serve.budget import spend_curve, within_budget
    from serve.pacing import GRID
    from serve.settings import ExplorationSettings

    policy = RoutingPolicy.load(checkpoint)
    costs = route_costs(policy.meta["prices"], policy.models, count_tokens(PROMPTS, policy.encoder), 256)
    curve = spend_curve(policy, policy.observe(PROMPTS), costs, ExplorationSettings(), GRID)
    if budget is None:
        return curve
    pick = within_budget(curve, budget)
    return pick.w_q, pick.dollars_per_1k


@pytest.mark.parametrize("topology", ["colocated", "split"])
def test_routes_without_a_preference_are_paced_to_the_live_budget(world, topology):
    """The paced weight is the largest w_q whose estimated spend on the replica's recent paced routes
    fits the budget (exactly calibrate's pick for the same prompts); a route that sends a preference
    keeps it; a higher budget edited in place raises the weight; removing it restores the default."""
    from conftest import declarative_app
    from ray import serve

    root, port = world["root"], free_port()
    curve = offline_pick(world["checkpoint"], None)
    spends = np.array([p.dollars_per_1k for p in curve])
    assert spends[-1] > 1.2 * spends[0], spends  # quality costs more on this world: a budget has something to choose
    low = float(spends[0] + 0.3 * (spends[-1] - spends[0]))
    high = float(spends[0] + 0.8 * (spends[-1] - spends[0]))
    _, deploy_live = declarative_app(world["checkpoint"], root, topology, port)
    client = Client(port)

    def deploy(budget):
        deploy_live({"budget": budget})

    def stats():
        st, body = client.get("/v1/stats")
        return body if st == 200 else {}

    def paced_round(extra: dict | None = None) -> list[dict]:
        """Each prompt 8 times, no preference: one window's worth (window 48), two scans (every 24)."""
        out = []
        for _ in range(8):
            for p in PROMPTS:
                st, r = client.post("/v1/route", {"prompt": p, **(extra or {})})
                assert st == 200, r
                out.append(r)
        return out

    def settled(budget_value, extra: dict | None = None) -> dict:
        """Paced rounds until two scans have run on a full window under this budget: any 48 routes in a
        row hold each prompt 8 times, so from then on the window is PROMPTS' mix exactly."""
        deadline, first = time.time() + 120, None
        while time.time() < deadline:
            paced_round(extra)
            pacing = stats().get("pacing") or {}
            if pacing.get("dollars_per_1k") != budget_value:
                continue
            first = pacing["scans"] if first is None else first
            if pacing["scans"] >= first + 2 and pacing["window"] == 48:
                time.sleep(0.5)  # the scan runs in its own thread; let the last one land
                return stats()
        raise AssertionError(f"pacing never settled at {budget_value}: {stats()}")

    try:
        deploy({"dollars_per_1k": low, "window": 48, "every": 24})
        deadline = time.time() + 120
        while client.get("/healthz")[0] != 200 or not stats():
            assert time.time() < deadline, "the app never came up"
            time.sleep(0.5)
        s = settled(low)
        want_wq, want_spend = offline_pick(world["checkpoint"], low)
        assert s["offer"]["budget"]["dollars_per_1k"] == low and s["pacing"]["preference"][0] == want_wq, (s, want_wq)
        assert s["pacing"]["estimated_dollars_per_1k"] == pytest.approx(want_spend, rel=1e-6) and want_spend <= low
        assert 0.0 < want_wq < 1.0  # the budget binds somewhere inside the range
        routes = paced_round()
        assert all(r["preference"] == [want_wq, pytest.approx(1 - want_wq)] for r in routes[-6:]), routes[-1]
        st, r = client.post("/v1/route", {"prompt": PROMPTS[0], "preference": [1.0, 0.0]})
        assert st == 200 and r["preference"] == [1.0, 0.0], r  # a client's own trade-off is never paced

        deploy({"dollars_per_1k": high, "window": 48, "every": 24})  # in place: the same replica, a new target
        s = settled(high)
        assert s["pacing"]["preference"][0] == offline_pick(world["checkpoint"], high)[0] > want_wq, s
        # routes that say they will send long contexts (input_tokens) are priced by them: the same budget buys less
        s = settled(high, {"input_tokens": 20_000})
        assert s["pacing"]["preference"][0] < offline_pick(world["checkpoint"], high)[0], s

        deploy(None)  # the budget removed: routes without a preference get the API's default again
        deadline = time.time() + 60
        while stats().get("pacing") is not None:
            assert time.time() < deadline, stats()
            time.sleep(0.5)
        time.sleep(1.0)
        st, r = client.post("/v1/route", {"prompt": PROMPTS[1]})
        assert st == 200 and r["preference"] == [0.8, 0.2], r
    finally:
        stop_serve()


def test_the_pacer_scans_early_once_then_every_interval_and_skips_routes_of_an_old_model_set(world):
    from barp_ray.policy import RoutingPolicy
    from serve.pacing import FIRST_SCAN, BudgetPacer, PacedRoute
    from serve.settings import Budget, ExplorationSettings

    policy = RoutingPolicy.load(world["checkpoint"])
    h, k = policy.observe(PROMPTS), len(policy.models)
    pacer = BudgetPacer(Budget(1e9, 256, window=100, every=40), policy.models)
    route = [PacedRoute(h[i % len(PROMPTS)], 10, np.ones(k, dtype=bool), False) for i in range(200)]
    for r in route[:FIRST_SCAN - 1]:
        pacer.observe(r)
    assert not pacer.due()
    pacer.observe(route[FIRST_SCAN])
    assert pacer.due()
    pacer.rescan(policy, policy.meta["prices"], ExplorationSettings())
    assert pacer.preference() == [1.0, 0.0] and pacer.scans == 1  # an unlimited budget buys the most quality
    for r in route[:39]:
        pacer.observe(r)
    assert not pacer.due()
    pacer.observe(PacedRoute(h[0], 10, np.ones(k + 1, dtype=bool), False))  # one more model: routed before a change
    assert not pacer.due() and pacer.state()["window"] == FIRST_SCAN + 39


def test_models_with_enough_feedback_are_priced_at_their_bills(world):
    from barp_ray.policy import RoutingPolicy
    from serve.pacing import BudgetPacer, PacedRoute
    from serve.settings import Budget, ExplorationSettings

    policy = RoutingPolicy.load(world["checkpoint"])
    h, k = policy.observe(PROMPTS), len(policy.models)
    pacer = BudgetPacer(Budget(5.0, 256), policy.models)
    for i in range(48):
        pacer.observe(PacedRoute(h[i % len(PROMPTS)], 10, np.ones(k, dtype=bool), False))
    same = {m: 0.001 for m in policy.models}  # $1 per 1,000 routes, whichever model: no trade-off to make
    pacer.rescan(policy, policy.meta["prices"], ExplorationSettings(), same)
    assert pacer.preference() == [1.0, 0.0] and pacer.estimate == pytest.approx(1.0) and pacer.billed == sorted(same)
    dear = {m: 0.01 for m in policy.models}  # $10 per 1,000 against a $5 budget: nothing fits, the cheapest routing
    pacer.rescan(policy, policy.meta["prices"], ExplorationSettings(), dear)
    assert pacer.w_q == 0.0 and pacer.estimate == pytest.approx(10.0)
    estimate_only = BudgetPacer(Budget(5.0, 256, price_by="estimate"), policy.models)
    for i in range(48):
        estimate_only.observe(PacedRoute(h[i % len(PROMPTS)], 10, np.ones(k, dtype=bool), False))
    estimate_only.rescan(policy, policy.meta["prices"], ExplorationSettings(), dear)
    assert estimate_only.billed == [] and estimate_only.estimate != pytest.approx(10.0)


def test_the_trainer_passes_live_bills_to_the_routers_pacing(world):
    """Feedback's costs reach the replicas' pacing through the trainer's weight poll: routes explore
    uniformly here (epsilon 1), so every model soon has 20 bills, and at $10 per 1,000 against a $5
    budget nothing fits."""
    from ray import serve

    from serve.app import app_builder

    root, port = world["root"], free_port()
    args = {"checkpoint": world["checkpoint"], "log_dir": str(root / "log-bills"), "auth": {"token_file": str(root / "token")},
            "router_autoscaling": {"min_replicas": 1, "max_replicas": 1}, "exploration": {"epsilon": 1.0},
            "trainer": {"state_dir": str(root / "trainer-bills"), "min_batch": 8}, "budget": {"dollars_per_1k": 5.0, "every": 16}}
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    client = Client(port)
    try:
        serve.run(app_builder(args), name="barp", route_prefix="/")
        deadline = time.time() + 180
        while True:
            for p in PROMPTS * 4:
                st, r = client.post("/v1/route", {"prompt": p})
                assert st == 200, r
                st, fb = client.post("/v1/feedback", {"request_id": r["request_id"], "score": 0.5, "cost": 0.01})
                assert st == 200, fb
            pacing = client.get("/v1/stats")[1]["pacing"]
            if len(pacing["priced_by_bill"]) == 6 and pacing["estimated_dollars_per_1k"] == pytest.approx(10.0):
                break
            assert time.time() < deadline, pacing
        assert pacing["preference"] == [0.0, 1.0], pacing
    finally:
        stop_serve()


def test_a_named_clients_own_budget_paces_its_routes_apart_from_everyone_elses(world, tmp_path):
    """`client_budgets` (live): a named client's routes without a preference are paced by its own
    budget, on its own recent routes, to calibrate's pick for its prompts, even over its default
    preference; everyone else's (anonymous, or a client without one) by the live budget."""
    import json

    from conftest import declarative_app

    root, port = world["root"], free_port()
    curve = offline_pick(world["checkpoint"], None)
    spends = np.array([p.dollars_per_1k for p in curve])
    low = float(spends[0] + 0.3 * (spends[-1] - spends[0]))
    high = float(spends[0] + 0.8 * (spends[-1] - spends[0]))
    tokens = {"lean": "lean-app-" + "0123456789abcdef", "plain": "plain-app-" + "0123456789abcdef"}
    (tmp_path / "clients.yaml").write_text(json.dumps({"lean": {"token": tokens["lean"], "preference": 0.99},
                                                       "plain": {"token": tokens["plain"]}}))
    args, deploy = declarative_app(world["checkpoint"], root, "colocated", port)
    args["auth"]["clients_file"] = str(tmp_path / "clients.yaml")
    anonymous, lean, plain = Client(port), Client(port, token=tokens["lean"]), Client(port, token=tokens["plain"])

    def stats():
        st, body = anonymous.get("/v1/stats")
        return body if st == 200 else {}

    try:
        deploy({"budget": {"dollars_per_1k": high, "window": 48, "every": 24},
                "client_budgets": {"lean": {"dollars_per_1k": low, "window": 48, "every": 24}}})
        deadline = time.time() + 120
        while anonymous.get("/healthz")[0] != 200 or not stats():
            assert time.time() < deadline, "the app never came up"
            time.sleep(0.5)
        first, deadline = None, time.time() + 180
        while True:
            assert time.time() < deadline, stats()
            for _ in range(8):  # each pacer's window: PROMPTS eight times, from its own routes only
                for p in PROMPTS:
                    assert lean.post("/v1/route", {"prompt": p})[0] == 200
                    assert anonymous.post("/v1/route", {"prompt": p})[0] == 200
            s = stats()
            mine, everyone = s["client_pacing"].get("lean") or {}, s["pacing"] or {}
            scans = (mine.get("scans", 0), everyone.get("scans", 0))
            first = scans if first is None else first
            if min(scans[0] - first[0], scans[1] - first[1]) >= 2 and mine["window"] == everyone["window"] == 48:
                time.sleep(0.5)
                s = stats()
                break
        assert s["offer"]["client_budgets"]["lean"]["dollars_per_1k"] == low
        assert s["client_pacing"]["lean"]["preference"][0] == offline_pick(world["checkpoint"], low)[0], s["client_pacing"]
        assert s["pacing"]["preference"][0] == offline_pick(world["checkpoint"], high)[0], s["pacing"]
        assert s["client_pacing"]["lean"]["preference"][0] < s["pacing"]["preference"][0]
        st, r = lean.post("/v1/route", {"prompt": PROMPTS[0]})
        assert st == 200 and r["preference"] == s["client_pacing"]["lean"]["preference"], r  # its budget, not its 0.99
        st, r = plain.post("/v1/route", {"prompt": PROMPTS[0]})
        assert st == 200 and r["preference"] == s["pacing"]["preference"], r  # a client without a budget: the live one
        st, r = lean.post("/v1/route", {"prompt": PROMPTS[0], "preference": 0.5})
        assert st == 200 and r["preference"] == [0.5, 0.5], r  # a request's own trade-off is never paced
    finally:
        stop_serve()
