"""Encoder + policy for batches of routes, and each batch's decisions written before any is answered.

One class for both topologies (`ServeSettings.topology`): in `split` a RouterModel replica holds it
and writes decisions through the feedback log's deployment; in `colocated` the HTTP ingress holds it
and writes them to the feedback store itself, so a route makes no deployment call at all.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable

import numpy as np
from ray import serve

from serve.pacing import DEFAULT_PREFERENCE, BudgetPacer, PacedRoute
from serve.settings import ServeSettings, live_offer
from serve.request_limits import context_overflow, lacking, narrowed, route_cost_estimates

logger = logging.getLogger("ray.serve")


class DecisionWriteError(RuntimeError):
    """The batch's decisions could not be recorded: none of its routes may be answered 2xx."""


DecisionWriter = Callable[[list[dict]], Awaitable[None]]
INLINE_BATCH = 4  # colocated: batches up to this size compute on the event loop (Router.__init__)


def take_offer(user_config: dict | None, meta: dict, first: bool, apply=None):
    """The live offer from `user_config`, applied with `apply(offer)`; (offer, None) or (None, error).

    At start a bad offer fails the replica (the deploy fails, as for any bad setting). Later, in
    Serve's in-place update of an edited `user_config`, it is refused with an error log and the
    current offer keeps serving: a typo in a price must not take routing down."""
    try:
        offer = live_offer(user_config, meta)
        if apply is not None:
            apply(offer)
        return offer, None
    except ValueError as e:  # SettingsError, CardError: the message names the field
        if first:
            raise
        logger.error("live offer refused, the current one keeps serving: %s", e)
        return None, str(e)


def _paced(pacer: BudgetPacer | None, budget, models: tuple[str, ...]) -> BudgetPacer | None:
    """The pacer for a live budget: none without one, the same one retargeted, or a new one."""
    if budget is None:
        return None
    if pacer is None:
        return BudgetPacer(budget, models)
    pacer.retarget(budget, models)
    return pacer


class Router:
    """Must be built inside a Serve replica (it reads the replica's id and CPUs, and starts polling
    the trainer for published weights on the running event loop)."""

    def __init__(self, settings: ServeSettings, trainer, write: DecisionWriter):
        import ray
        import torch

        from barp_ray.encoder import load_encoder
        from barp_ray.policy import RoutingPolicy, load_policy_state
        from serve.metrics import ReplicaMetrics
        from serve.trainer import latest_published

        # Batches run at as many torch threads as CPUs Ray reserved for the replica (at least one): more
        # would take cores the other deployments and replicas were promised, and torch's idle threads
        # spin on them after every forward. A route alone in the replica may use `lone_route_threads`
        # (where routing is the machine's main work): one client's latency, bought with spin CPU.
        reserved = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
        self._threads = max(1, reserved)
        self._lone_threads = min(settings.lone_route_threads, os.cpu_count() or 1) or self._threads
        torch.set_num_threads(self._threads)
        self._threads_now = self._threads
        self._ongoing = 0  # routes in this replica now, waiting or computing
        # Colocated, the event loop is the HTTP ingress's: a 32-prompt forward on it held every chat
        # stream's next chunk for up to ~0.3 s (bench/chat_stream_under_load.py), so a batch of more
        # than INLINE_BATCH prompts computes in this one thread and the loop keeps reading requests
        # and passing chunks on (torch releases the GIL). Smaller ones stay on the loop (a few tens of
        # ms at most): the thread competes with the loop for the GIL on every op of the encoder, which
        # doubled a lone route's latency, and with every batch in it 2 and 4 clients got 10-30 % fewer
        # routes/s (alternating A/B in one run, session 25).
        # Split, RouterModel's loop serves only the ingress's calls and the thread only cost throughput
        # (32 clients: 91-95 routes/s against 105 inline, session 25's runs): batches stay inline there.
        self._batch_thread = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="route-batch")
                              if settings.topology == "colocated" else None)
        self.settings, self.trainer, self.write = settings, trainer, write
        self.policy = RoutingPolicy.load(settings.checkpoint)
        self.version, self.loaded_at = 0, time.time()
        self.epsilon = settings.exploration.epsilon  # the trainer raises it for a while after a forget
        # Start from the newest published weights on disk, not the checkpoint: the trainer may be
        # down (or restarting) while this replica starts.
        published = latest_published(settings.trainer.state_dir)
        if published is not None:
            try:
                load_policy_state(self.policy.module, published[1])
                self.version = published[0]
            except RuntimeError:
                logger.warning("the newest published weights do not fit this checkpoint; serving the checkpoint as is")
                self.policy = RoutingPolicy.load(settings.checkpoint)
        self.started_version = self.version
        self.prices: list[float] | None = None  # blended $/Mtok per offered model: reconfigure sets them
        self.offer_prices: dict = {}  # the offer's {model: {input_per_mtok, output_per_mtok}}, for the budget's estimate
        self.context_windows: dict[str, int] = {}  # the offer's known context windows, in tokens
        self.capabilities: dict[str, tuple[str, ...]] = {}  # the offer's known capabilities beyond text
        self.bills: dict[str, float] = {}  # each model's recent mean billed cost, from the trainer's feedback
        self.latency: dict[str, float] = {}  # each model's recent reported latency (its quantile), from the trainer
        self.pacer: BudgetPacer | None = None  # set by a live `budget`: the weight for routes without a preference
        self.client_pacers: dict[str, BudgetPacer] = {}  # live `client_budgets`: a named client's own
        self._scan_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="budget-scan")
        self.offer_taken = False
        from serve.embedding_cache import EmbeddingCache

        self.metrics = ReplicaMetrics()
        self.embeddings = EmbeddingCache(settings.embedding_cache, on_lookup=self.metrics.encoded)
        self.metrics.serving(self.version)
        self.replica = serve.get_replica_context().replica_id.unique_id
        load_encoder(self.policy.encoder, "cpu")  # warm: the first request should not pay for it
        self.route_batch.set_max_batch_size(settings.max_batch_size)  # the wait is set per route, in route()
        self._rng = np.random.default_rng()
        self._poll = asyncio.get_running_loop().create_task(self._poll_weights())

    def reconfigure(self, user_config: dict) -> None:
        """Serve's `user_config` (at start and on every change): a re-deploy with new prices or a new
        model list routes at once, with no training step and no restart. The new policy is built
        aside and swapped in whole, so a batch in flight routes entirely under the old offer or
        entirely under the new one."""

        def apply(offer) -> None:
            fresh = copy.deepcopy(self.policy)
            offer.apply(fresh.module)
            fresh.models = offer.models
            self.policy, self.prices = fresh, offer.blended()  # prices are recorded with each decision
            self.offer_prices, self.context_windows, self.capabilities = offer.prices, offer.context_windows, offer.capabilities
            self.pacer = _paced(self.pacer, offer.budget, offer.models)
            self.client_pacers = {name: _paced(self.client_pacers.get(name), budget, offer.models)
                                  for name, budget in offer.client_budgets.items()}

        # Checked here too: a `user_config` edited in the Serve config file skips app_builder.
        if take_offer(user_config, self.policy.meta, first=not self.offer_taken, apply=apply)[0] is not None:
            self.offer_taken = True

    async def _poll_weights(self) -> None:
        from barp_ray.policy import load_policy_state

        while True:
            try:
                version, weights, self.epsilon, self.bills, self.latency = await self.trainer.get_weights.remote(
                    self.version, self.replica, self.loaded_at)
                if weights is not None:
                    fresh = copy.deepcopy(self.policy)  # a failed load must not leave half-new weights
                    load_policy_state(fresh.module, weights)  # the offered models and prices stay
                    self.policy, self.version, self.loaded_at = fresh, version, time.time()
                    continue  # report the new version at once
            except Exception as e:  # noqa: BLE001 - trainer down: keep serving the last good weights
                logger.debug("weights poll failed (%s); serving policy_version %d", type(e).__name__, self.version)
            # Re-set every poll, not only on change: a value recorded once, before the process's
            # metrics exporter was up, never reached Prometheus (seen in CI for one of two replicas).
            self.metrics.serving(self.version)
            await asyncio.sleep(self.settings.weights_poll_s)

    def _compute(self, items: list[dict], threads: int) -> tuple[list[dict], list[dict]]:
        """`decide` at `threads` torch threads, set from the thread that computes (torch keeps a
        count per thread; MKL's is process-wide). Forwards never overlap: a lone route computes
        only when no other route is in the replica, and batches queue for the one batch thread."""
        if threads != self._threads_now:  # only on a change: no torch call on the hot path otherwise
            import torch

            torch.set_num_threads(threads)
            self._threads_now = threads
        return self.decide(items)

    def decide(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        """(answers, decisions to record) for a batch, under one offer and one policy version."""
        from serve.exploration import exploring_distribution
        from serve.feedback_store import encode_vector, new_request_id

        policy, prices, version, epsilon = self.policy, self.prices, self.version, self.epsilon
        # swapped with the policy by reconfigure: one offer per batch
        offer_prices, windows, capabilities = self.offer_prices, self.context_windows, self.capabilities
        models = list(policy.models)
        # The client left the trade-off to the service: its named client's budget paces it, else the live budget.
        pacers = [(self.client_pacers.get(it.get("client")) or self.pacer) if it["preference"] is None else None for it in items]
        paced = [it["preference"] is None for it in items]
        if any(paced):
            items = [{**it, "preference": pacer.preference() if pacer is not None else list(DEFAULT_PREFERENCE)} if p else it
                     for it, p, pacer in zip(items, paced, pacers)]
        stats = [it.get("text_stats") for it in items]
        prompts = [it["prompt"] for it in items]
        emb = policy.observe(prompts, None if None in stats else stats, self.embeddings.encode(prompts, policy.encoder))
        probs = policy.probabilities(emb, np.asarray([it["preference"] for it in items], dtype=np.float32))
        e = self.settings.exploration
        out, decisions = [], []
        to_pace = []  # (item index, its mask, greedy) of the paced routes that were routed
        for i, (it, x, p) in enumerate(zip(items, emb, probs)):
            mask = None
            if it.get("candidates") is not None:
                mask = [m in it["candidates"] for m in models]
                if not any(mask):  # the ingress checked them against an offer that has just changed
                    out.append({"status": 422, "error": f"candidates: none of {sorted(it['candidates'])} is offered now; "
                                                        f"offered: {models}"})
                    continue
            met = cost_met = context_met = True
            if it.get("needs") and capabilities:  # a model without what the request takes cannot answer it at all
                allowed = [m for j, m in enumerate(models) if mask is None or mask[j]]
                mask, able = narrowed(models, mask, lambda ms: lacking(capabilities, ms, it["needs"]), 0.0)
                if not able:
                    out.append({"status": 422, "error": f"needs: none of the candidates {allowed} takes {sorted(it['needs'])} "
                                                        f"(capabilities: {({m: list(capabilities[m]) for m in allowed})})"})
                    continue
            if it.get("context_tokens") is not None and windows:  # first: a model the request overflows cannot answer it
                mask, context_met = narrowed(models, mask, lambda ms: context_overflow(windows, ms, it["context_tokens"]), 0.0)
            if it.get("max_latency_s") is not None and self.latency:  # a route's latency limit, by the reported latencies
                mask, met = narrowed(models, mask, lambda ms: {m: self.latency.get(m) for m in ms}, it["max_latency_s"])
            if it.get("max_cost") is not None:  # a route's cost limit, by its estimate at the offer's prices
                mask, cost_met = narrowed(
                    models, mask, lambda ms: route_cost_estimates(offer_prices, ms, it["input_tokens"], it["output_tokens"]),
                    it["max_cost"], keep_unknown=False)
            if it["mode"] == "greedy":
                served = exploring_distribution(p[None], 0.0, 1.0, mask)[0]
                a = int(np.argmax(served))
                served = np.eye(len(p))[a]  # deterministic: the propensity of the choice is 1
            else:
                served = exploring_distribution(p[None], epsilon, e.temperature, mask)[0]
                a = int(self._rng.choice(len(served), p=served / served.sum()))
            # A fresh id per attempt: if this replica dies after the write, the retry is a new
            # decision, and the orphan one simply expires.
            request_id = new_request_id()
            decisions.append({"request_id": request_id, "time": time.time(), "embedding": encode_vector(x),
                              "preference": list(it["preference"]), "model": models[a],
                              "behaviour_prob": float(served[a]), "mode": it["mode"], "policy_version": version,
                              "models": models, "prices": prices,  # the offer it was made under
                              "candidates": None if mask is None else [m for m, ok in zip(models, mask) if ok],
                              "client": it.get("client")})  # the named client it was routed for (auth.clients_file)
            out.append({"request_id": request_id, "model": models[a], "probabilities": dict(zip(models, served.tolist())),
                        "behaviour_prob": float(served[a]), "policy_version": version, "replica": self.replica,
                        "preference": list(it["preference"]), **({} if met else {"latency_unmet": True}),
                        **({} if cost_met else {"cost_unmet": True}), **({} if context_met else {"context_unmet": True})})
            if pacers[i] is not None:
                to_pace.append((i, mask, it["mode"] == "greedy"))
        if to_pace:
            from barp_ray.encoder import count_tokens

            # A request that states its billed input (chat: every message) is priced by it; the others are counted.
            uncounted = [i for i, _, _ in to_pace if "input_tokens" not in items[i]]
            counted = dict(zip(uncounted, count_tokens([items[i]["prompt"] for i in uncounted], policy.encoder).tolist()))
            for i, mask, greedy in to_pace:
                n = items[i].get("input_tokens", counted.get(i))
                allowed = np.ones(len(models), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
                pacers[i].observe(PacedRoute(emb[i], int(n), allowed, greedy))
        return out, decisions

    # Two batches in flight: one computes while the other waits for its decisions to be written.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
    async def route_batch(self, items: list[dict]) -> list[dict]:
        if len(items) == 1 and self._ongoing <= 1:
            out, decisions = self._compute(items, self._lone_threads)
        elif self._batch_thread is None or len(items) <= INLINE_BATCH:
            out, decisions = self._compute(items, self._threads)
        else:
            out, decisions = await asyncio.get_running_loop().run_in_executor(
                self._batch_thread, self._compute, items, self._threads)
        self._maybe_rescan()
        if decisions:
            try:
                await self.write(decisions)
            except DecisionWriteError:
                return [{"error": "feedback log: unavailable, the decision was not recorded; retry shortly"}] * len(items)
        return out

    def _maybe_rescan(self) -> None:
        """Start each due budget's scan in the scan thread; routing goes on with the current weights."""
        for client, pacer in [("", self.pacer), *self.client_pacers.items()]:
            if pacer is None or not pacer.due():
                continue
            pacer.scanning = True
            policy, prices, bills = self.policy, self.offer_prices, self.bills
            exploration = dataclasses.replace(self.settings.exploration, epsilon=self.epsilon)

            def scan(pacer=pacer, client=client, policy=policy, prices=prices, bills=bills, exploration=exploration) -> None:
                try:
                    import torch

                    torch.set_num_threads(1)  # per thread: the scan must not take the cores routing uses
                    pacer.rescan(policy, prices, exploration, bills)
                    self.metrics.pacing(pacer.w_q, pacer.estimate, client)
                except Exception:  # noqa: BLE001 - a failed scan keeps the current weight; routing goes on
                    logger.exception("budget scan failed; the paced weight stays %.2f", pacer.w_q)
                finally:
                    pacer.scanning = False

            self._scan_pool.submit(scan)

    async def route(self, item: dict) -> dict:
        # Wait for company only when there is some: a route that finds the replica empty (one client,
        # light traffic) starts its batch at once; under load the batch waits and fills.
        self.route_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s if self._ongoing else 0.0)
        self._ongoing += 1
        try:
            return await self.route_batch(item)
        finally:
            self._ongoing -= 1

    def info(self) -> dict:
        return {"replica": self.replica, "policy_version": self.version, "started_version": self.started_version,
                "pid": os.getpid(), "pacing": self.pacer.state() if self.pacer is not None else None,
                "embedding_cache": self.embeddings.state(),
                "client_pacing": {name: p.state() for name, p in self.client_pacers.items()}}
