"""The Ray Serve application: HTTP API + batched routers, feedback log, continuous trainer.

In the `colocated` topology (the default) the RouterAPI ingress replicas route themselves
(`serve.routing.Router`: encoder + policy, @serve.batch) and write each batch's decisions to the
feedback store directly: no deployment call on a route, for the lowest latency; the ingress
autoscales like a router. In `split` (`configs/serve_split.yaml`):

    RouterAPI (FastAPI ingress) --route--> RouterModel (autoscaling, @serve.batch: encoder + policy)
              |                              |--the batch's decisions--> FeedbackLogDeployment
              |--feedback------------------------------------------------> FeedbackLogDeployment (feedback store: SQLite or PostgreSQL, one replica)
    TrainerDeployment (one replica) reads joined rewards from the store, updates on RLlib's Learner,
    checks each candidate off-policy before publishing it, and hands published weights to every
    router replica (RouterModel here, RouterAPI colocated), which polls it; if the trainer is down,
    replicas keep serving their last good weights (and a replica that starts then loads the last
    published ones from disk).

Deploy: `serve run configs/serve.yaml` / `serve deploy configs/serve.yaml`, or from Python:
`serve.run(app_builder({...}))`.
"""

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import JSONResponse
from ray import serve

from barp_ray.policy import read_meta, stated_answer_tokens
from barp_ray.prompt_stats import text_stats
from serve.guard import (CHAT_PATH, MESSAGES_PATH, RESPONSES_PATH, GuardError, PromptLimiter, error_response, load_admin_token,
                         load_clients, load_token)
from serve.schemas import (ChatCompletionRequest, ChatCompletionResponse, ChatErrorBody, ErrorBody, FeedbackRequest,
                           FeedbackResponse, LoadCheckpointRequest, LoadCheckpointResponse, MessageObject, MessagesErrorBody,
                           MessagesRequest, CountTokensRequest, ResponseObject, ResponsesRequest, RouteRequest, RouteResponse,
                           TokenCountResponse, WithdrawRequest, WithdrawResponse)
from serve.routing import take_offer
from serve.settings import LIVE_KEYS, ServeSettings, SettingsError, alias_pattern, live_offer, settings_from_args

logger = logging.getLogger("ray.serve")
CLIENTS_POLL_S = 2.0  # how often each ingress replica looks for an edited auth.clients_file


# Internal deployments are called on every route, feedback and weight poll: one access-log line
# per call at INFO drowned the replica logs. The HTTP ingress keeps its access log.
QUIET = {"enable_access_log": False}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, logging_config=QUIET)
class FeedbackLogDeployment:
    """The one writer of the feedback store; also retires decisions whose reward wait time ran out."""

    async def __init__(self, settings: ServeSettings):
        from serve.feedback_db import open_database
        from serve.feedback_store import FeedbackStore

        f = settings.feedback
        self.settings = settings
        self.store = FeedbackStore(await asyncio.to_thread(open_database, settings), tau=float(read_meta(settings.checkpoint)["tau"]),
                                   wait_s=f.wait_s, on_missing=f.on_missing, default_reward=f.default_reward)
        from serve.metrics import FeedbackMetrics

        self.metrics = FeedbackMetrics()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._retire_loop())]
        self.archive = None
        if settings.retention.enabled:
            from serve.feedback_archive import FeedbackArchive

            r = settings.retention
            self.archive = await asyncio.to_thread(FeedbackArchive, r.archive) if r.archive else None
            self._tasks.append(loop.create_task(self._retention_loop()))

    async def _retire_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.store.retire_expired)
            except Exception:  # noqa: BLE001 - a failed sweep is retried on the next tick
                logger.exception("retiring expired decisions failed")
            await asyncio.sleep(self.settings.feedback.retire_every_s)

    async def _retention_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.prune_now)
            except Exception:  # noqa: BLE001 - nothing left the database; the next pass tries again
                logger.exception("retention failed")
                self.metrics.retention_failed()
            await asyncio.sleep(self.settings.retention.every_s)

    def prune_now(self, now: float | None = None) -> int:
        """One retention pass (`retention:`); how many rewards left the database."""
        r = self.settings.retention
        if not r.enabled:
            return 0
        max_age_s = r.max_age_days * 86400.0 if r.max_age_days is not None else None
        gone = self.store.prune(r.keep_rewards, max_age_s, trained_only=self.settings.trainer.enabled,
                                archive=self.archive, batch=r.batch, now=now)
        self.metrics.pruned(gone, archived=self.archive is not None)
        return gone

    # Database calls run in threads (a decision batch inline when SQLite is free: ~0.1 ms): the
    # replica's event loop stays free to answer Serve's probes.
    async def record_decisions(self, decisions: list[dict]) -> None:
        await self.store.record_decisions_async(decisions)

    async def note_answer_cost(self, request_id: str, cost: float) -> bool:
        return await asyncio.to_thread(self.store.note_answer_cost, request_id, cost)

    async def record_feedback(self, request_id: str, score: float, cost: float | None, replay: bool = False,
                              client: str | None = None, latency_s: float | None = None) -> dict:
        from serve.feedback_store import FeedbackError

        try:
            record = await asyncio.to_thread(self.store.record_feedback, request_id, score, cost, replay, client, latency_s)
        except FeedbackError as e:
            self.metrics.rejected(e.reason)
            return {"ok": False, "status": e.status, "reason": e.reason, "error": str(e)}
        self.metrics.accepted(record, time.time())
        return {"ok": True, "record": record}

    async def withdraw_decisions(self, request_ids: list[str]) -> int:
        return await asyncio.to_thread(self.store.withdraw_decisions, request_ids)

    async def is_pending(self, request_id: str) -> bool:
        return await asyncio.to_thread(self.store.is_pending, request_id)

    async def withdraw(self, request_id: str, client: str | None = None) -> dict:
        from serve.feedback_store import FeedbackError

        try:
            await asyncio.to_thread(self.store.withdraw, request_id, client)
        except FeedbackError as e:
            return {"ok": False, "status": e.status, "error": str(e)}
        return {"ok": True}

    def retire_now(self, now: float | None = None) -> int:
        return self.store.retire_expired(now)

    async def counts(self) -> dict:
        return await asyncio.to_thread(self.store.counts)

    def pid(self) -> int:
        import os

        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.25}, logging_config=QUIET)
class TrainerDeployment:
    async def __init__(self, settings: ServeSettings):
        import torch

        from serve.trainer import ContinuousTrainer

        # One intra-op thread: the trainer shares the machine with the router replicas, and routing
        # latency matters more than how fast one update finishes.
        torch.set_num_threads(1)
        self.settings = settings
        self.trainer = await asyncio.to_thread(ContinuousTrainer, settings)
        from serve.metrics import TrainerMetrics

        self.metrics = TrainerMetrics()
        self.metrics.version.set(self.trainer.published_version)
        self.replicas: dict[str, dict] = {}  # replica -> {"version", "loaded_at", "seen", "history"}
        self._lock = asyncio.Lock()
        self.offer_taken = False  # reconfigure (Serve calls it next) sets it
        # Updates that raised in a row, the first one's time and the last one's error: a trainer that fails
        # on every update (its state_dir gone, the store unreadable) keeps serving the last weights, silently
        # but for this, its metric and the log.
        self.failing: dict | None = None
        self._task = asyncio.get_running_loop().create_task(self._loop()) if settings.trainer.enabled else None

    async def reconfigure(self, user_config: dict) -> None:
        """A new offer (models, prices) from the live serving config: learn over it from now on."""
        from barp_ray.policy import read_meta

        offer, _ = take_offer(user_config, read_meta(self.settings.checkpoint), first=not self.offer_taken)
        if offer is not None:
            async with self._lock:
                await asyncio.to_thread(self.trainer.offer, offer)
            self.offer_taken = True

    async def _step(self) -> dict | None:
        async with self._lock:
            try:
                row = await asyncio.to_thread(self.trainer.train_once)
            except Exception as e:
                self.metrics.failures.inc(1)
                since, n = (self.failing["since"], self.failing["updates_in_a_row"]) if self.failing else (time.time(), 0)
                self.failing = {"updates_in_a_row": n + 1, "since": since, "last_error": f"{type(e).__name__}: {e}"[:500]}
                raise
        if row is not None:  # an update made and saved: failing no more (an idle poll proves nothing)
            self.failing = None
            self.metrics.update(row, self.trainer.published_version)
        return row

    async def _loop(self) -> None:
        busy = self.settings.trainer.max_busy_fraction
        while True:
            started = time.monotonic()
            try:
                row = await self._step()
            except Exception:  # noqa: BLE001 - a bad batch must not kill the loop
                logger.exception("continuous trainer update failed")
                row = None
            self.metrics.version.set(self.trainer.published_version)  # refreshed, as the replicas' version
            if row is None:
                await asyncio.sleep(self.settings.trainer.poll_s)
            elif busy < 1:
                # Rest in proportion to the update just made: under heavy traffic the trainer takes
                # at most this share of a core, batches grow instead, and routing keeps its CPU.
                await asyncio.sleep((time.monotonic() - started) * (1 - busy) / busy)

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: stop the loop before its thread pool goes away.
        if getattr(self, "_task", None) is not None:
            self._task.cancel()

    async def train_now(self, max_updates: int = 1_000_000) -> list[dict]:
        """Drain pending feedback into updates now (admin and tests); the background loop does the same."""
        rows = []
        while len(rows) < max_updates and (row := await self._step()) is not None:
            rows.append(row)
        return rows

    def get_weights(self, have_version: int, replica: str | None = None, loaded_at: float | None = None):
        """Replicas poll here: (newest version, its weights if newer than theirs else None, the epsilon
        to explore with now, each model's recent mean bill). Each poll also reports which version the
        replica serves and since when."""
        if replica is not None:
            r = self.replicas.setdefault(replica, {"history": []})
            if r.get("version") != have_version:
                r["history"] = (r["history"] + [(have_version, loaded_at or time.time())])[-64:]
            r.update(version=have_version, loaded_at=loaded_at, seen=time.time())
        version, weights = self.trainer.snapshot
        return (version, None if version <= have_version else weights, self.trainer.exploration_epsilon(),
                self.trainer.billed_costs(), self.trainer.latency_estimates())

    def _live_replicas(self) -> dict[str, dict]:
        horizon = max(5.0, 5 * self.settings.weights_poll_s)
        return {k: v for k, v in self.replicas.items() if time.time() - v.get("seen", 0) < horizon}

    def rollout_delays(self) -> list[dict]:
        """Per recent published version: seconds from its oldest feedback's 2xx until every live
        replica served it (or a newer version)."""
        live = self._live_replicas()
        out = []
        for p in self.trainer.published:
            if "oldest_feedback_time" not in p:
                continue
            reached = []
            for r in live.values():
                t = [at for v, at in r["history"] if v >= p["version"] and at is not None]
                reached.append(min(t) if t else None)
            if live and all(x is not None for x in reached):
                out.append({"version": p["version"], "records_through": p["through_id"],
                            "delay_s": max(reached) - p["oldest_feedback_time"],
                            "delay_newest_s": max(reached) - p["newest_feedback_time"]})
        return out

    def status(self) -> dict:
        delays = self.rollout_delays()
        d = [x["delay_s"] for x in delays]
        return {**self.trainer.status(), "failing": self.failing,
                "replicas": {k: v["version"] for k, v in self._live_replicas().items()},
                "rollout_delay_s": {"last": d[-1] if d else None, "max_recent": max(d) if d else None,
                                    "median_recent": float(np.median(d)) if d else None, "versions": len(d)}}

    async def load_checkpoint(self, path: str, mode: str = "publish") -> dict:
        """Publish (or judge) a checkpoint's weights as the next version; a bad one is refused, old weights stay."""
        async with self._lock:
            from serve.trainer import CheckpointNotFound, GateRefused

            try:
                res = await asyncio.to_thread(self.trainer.load_checkpoint, path, mode)
            except CheckpointNotFound as e:
                return {"ok": False, "status": 404, "error": str(e)}
            except GateRefused as e:
                return {"ok": False, "status": 409, "error": str(e)}
            except ValueError as e:
                return {"ok": False, "status": 422, "error": str(e)}
            except OSError as e:  # the state_dir cannot take it (unwritable, unmounted, a file): the service's fault
                return {"ok": False, "status": 503,
                        "error": f"trainer: publishing failed ({type(e).__name__}: {str(e)[:300]}); the published weights stay"}
        return {"ok": True, **res}

    def pid(self) -> int:
        import os

        return os.getpid()


@serve.deployment(
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    logging_config=QUIET,
)
class RouterModel:
    """The `split` topology's router: a batch's routes are encoded and decided here, and its
    decisions written to the feedback log in one call before any of them is answered. Why a
    deployment of its own and not the ingress: a replica that dies mid-batch is retried by the
    ingress on another one, and replicas scale apart from the one HTTP ingress."""

    async def __init__(self, settings: ServeSettings, trainer, log):
        from serve.routing import Router

        async def write(decisions: list[dict]) -> None:
            from ray.exceptions import ActorUnavailableError, RayActorError

            from serve.routing import DecisionWriteError

            try:
                await _call_with_retry(log.record_decisions, decisions)
            except (RayActorError, ActorUnavailableError) as e:
                raise DecisionWriteError(type(e).__name__) from None

        self.router = Router(settings, trainer, write)

    def reconfigure(self, user_config: dict) -> None:
        self.router.reconfigure(user_config)

    async def route(self, item: dict) -> dict:
        return await self.router.route(item)

    def info(self) -> dict:
        return self.router.info()


api = FastAPI(
    title="barp-ray router",
    version="0.1.0",
    description="Picks an LLM per prompt (BaRP). Quality/cost preference per request; feedback trains it online.",
)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        msg = str(err.get("msg"))
        msg = msg.removeprefix("Value error, ") if err.get("type") == "value_error" else msg  # the validator's own words
        parts.append(f"{loc or 'body'}: {msg}")
    return _error(422, "; ".join(parts), request.url.path)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (a body that is not JSON: 400; unknown path: 404) in this API's error shape."""
    where = "body" if exc.status_code == 400 else "path"
    return _error(exc.status_code, f"{where}: {exc.detail}", request.url.path, headers=exc.headers)


def errors(*statuses: int, body=ErrorBody) -> dict:
    """OpenAPI `responses` for a POST: what every POST may answer (400 not JSON, 401 token, 413 too
    large, 422 invalid), plus `statuses`."""
    return {s: {"model": body} for s in sorted({400, 401, 413, 422, *statuses})}


def _openapi() -> dict:
    """The schema with this deployment's model names as enums: `candidates`, `fallbacks` and chat's `model`
    accept exactly what the service can route to (a schema-valid request is then never refused as an
    unknown model). The names come from serve.guard.STATE, filled by the ingress replica."""
    from fastapi.openapi.utils import get_openapi

    from serve.guard import STATE

    schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    comps = schema.get("components", {}).get("schemas", {})
    models, chat_models = STATE.get("models"), STATE.get("chat_models")

    def enum_items(prop: dict, values: list[str]) -> None:
        for sub in prop.get("anyOf", [prop]):
            if sub.get("type") == "array":
                sub["items"] = {"type": "string", "enum": list(values)}

    if models:
        enum_items(comps["RouteRequest"]["properties"]["candidates"], models)
    if chat_models is not None:
        enum_items(comps["RouteOptions"]["properties"]["candidates"], chat_models)
        enum_items(comps["RouteOptions"]["properties"]["fallbacks"], chat_models)
        aliases = STATE.get("model_aliases", {})
        names = ["barp-auto", *chat_models, *(a for a in aliases if "*" not in a)]
        patterns = [{"pattern": alias_pattern(a)} for a in aliases if "*" in a]
        for request in ("ChatCompletionRequest", "ResponsesRequest", "MessagesRequest"):
            prop = comps[request]["properties"]["model"]
            prop.update({"anyOf": [{"enum": names}, *patterns]} if patterns else {"enum": names})
    return schema


api.openapi = _openapi


class RouteRefused(Exception):
    """A route the service will not make: the status and one-line message its client gets (over HTTP,
    or through chat, which answers it in its own error shape)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


_error = error_response  # serve/guard.py: the guard's refusals share it


from serve.guard import GuardMiddleware  # noqa: E402

# Pure ASGI, not @api.middleware("http"): Starlette's BaseHTTPMiddleware runs every request
# through an extra task and memory streams, CPU the one ingress replica spends on each route.
api.add_middleware(GuardMiddleware)


async def _colocated_router(settings: ServeSettings, tau: float, log, trainer):
    """A Router in the ingress, writing each batch's decisions to the feedback store itself: a route
    then makes no deployment call. An SQLite store is a file on the feedback log's node, so every
    ingress replica must run there (one machine); a cluster uses PostgreSQL."""
    import ray

    from serve.feedback_db import open_database
    from serve.feedback_store import FeedbackStore
    from serve.routing import DecisionWriteError, Router

    if settings.feedback.database == "sqlite" and await log.node_id.remote() != ray.get_runtime_context().get_node_id():
        raise SettingsError("topology: colocated with feedback.database sqlite needs every ingress replica on the "
                            "feedback log's node; on a cluster use feedback.database: postgresql")
    store = FeedbackStore(await asyncio.to_thread(open_database, settings), tau=tau)

    async def write(decisions: list[dict]) -> None:
        try:
            await store.record_decisions_async(decisions)
        except Exception as e:  # noqa: BLE001 - any database failure: the batch is refused, never half-answered
            logger.warning("recording %d decisions failed: %s", len(decisions), type(e).__name__)
            raise DecisionWriteError(type(e).__name__) from None

    return Router(settings, trainer, write)


async def _call_with_retry(method, *args, attempts: int = 4, retry_kwargs: dict | None = None, **kwargs):
    """Retry a deployment call whose replica died mid-request (Serve replaces it); other errors propagate.

    `retry_kwargs` are added from the second attempt on (e.g. marking a feedback write as a replay).
    """
    from ray.exceptions import ActorUnavailableError, RayActorError

    for i in range(attempts):
        try:
            return await method.remote(*args, **kwargs, **(retry_kwargs if i and retry_kwargs else {}))
        except (RayActorError, ActorUnavailableError):
            if i == attempts - 1:
                raise
            await asyncio.sleep(0.2 * 2**i)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(api)
class RouterAPI:
    """`router` is the RouterModel deployment's handle, or None in the `colocated` topology: then
    this replica routes itself (`serve.routing.Router`) and writes decisions to the store directly."""

    async def __init__(self, settings: ServeSettings, router, log, trainer):
        self.settings = settings
        self.router, self.log, self.trainer = router, log, trainer
        meta = self.meta = read_meta(settings.checkpoint)
        self.models: list[str] = list(meta["models"])  # what is offered now: set by reconfigure
        self.prices: dict = meta.get("prices", {})
        self.offer = live_offer({}, meta)  # the decision's shrinkage and price multiplier: the checkpoint's until reconfigure
        self.offer_taken, self.offer_error = False, None
        self.tau = float(meta["tau"])
        self.local = None if router is not None else await _colocated_router(settings, self.tau, log, trainer)
        self.limiter = PromptLimiter(settings.limits, meta["encoder"])
        self.answer_tokens = stated_answer_tokens(meta)  # what a route's max_cost prices when the request names none
        # An operator's checkpoint must read prompts alike (ContinuousTrainer.load_checkpoint), so this holds.
        self.reads_text_stats = bool(meta.get("text_stats"))
        from serve.upstream import UpstreamPool

        self.upstreams = UpstreamPool(settings)
        self.chat_models = [m for m in self.models if m in settings.upstreams]  # what chat can forward to
        from serve.metrics import RouteMetrics

        self.metrics = RouteMetrics()
        from serve.upstream_health import UpstreamHealth

        f = settings.failover
        self.upstream_health = UpstreamHealth(f.failures_to_open, f.cooldown_s, on_change=self.metrics.breaker)
        from serve.context_refusals import ContextRefusals

        self.context_refusals = ContextRefusals()
        from serve.upstream_slots import UpstreamSlots

        self.upstream_slots = UpstreamSlots({m: up.max_concurrent for m, up in settings.upstreams.items()},
                                            on_change=self.metrics.in_flight)
        from serve.upstream_latency import UpstreamLatency

        lat = settings.latency
        self.upstream_latency = UpstreamLatency(lat.window, lat.quantile, lat.min_samples)
        from serve.judge import Judge

        self.judge = Judge(settings.judge, self.upstreams, self._judged_feedback, self.metrics.judged, self._still_pending)
        from serve.guard import STATE

        self.clients, self.clients_error = load_clients(settings.auth, self.models), None
        if settings.auth.clients_file and not settings.auth.disabled:
            self._clients_watch = asyncio.get_running_loop().create_task(self._watch_clients())
        STATE.update(
            token=load_token(settings.auth),
            admin_token=load_admin_token(settings.auth),
            clients=self.clients,
            require_for_route=settings.auth.require_for_route,
            require_for_chat=settings.auth.require_for_chat,
            models=self.models,
            chat_models=self.chat_models,
            model_aliases=settings.model_aliases,
            max_body_bytes=settings.limits.max_body_bytes,
            max_chat_body_bytes=settings.limits.max_chat_body_bytes,
        )

    async def _watch_clients(self) -> None:
        """Take an edited `auth.clients_file` (a team added, a token rotated) within CLIENTS_POLL_S,
        with no restart; a file that does not validate is refused, logged and shown in /v1/stats,
        and the clients before it stay."""
        from serve.guard import STATE

        path = Path(self.settings.auth.clients_file)

        def stamp():
            try:
                st = path.stat()
                return st.st_mtime_ns, st.st_size
            except OSError:
                return None

        seen = stamp()
        while True:
            await asyncio.sleep(CLIENTS_POLL_S)
            now = stamp()
            if now == seen:
                continue
            seen = now
            try:
                clients = load_clients(self.settings.auth, self.models)
            except GuardError as e:
                self.clients_error = str(e)
                logger.error("clients file refused, the clients before it stay: %s", e)
                continue
            self.clients, self.clients_error = clients, None
            STATE.update(clients=clients)

    def reconfigure(self, user_config: dict) -> None:
        from serve.guard import STATE

        def apply(offer) -> None:
            self.models, self.prices = list(offer.models), offer.prices
            self.offer = offer
            self.chat_models = [m for m in self.models if m in self.settings.upstreams]
            STATE.update(models=self.models, chat_models=self.chat_models)  # the OpenAPI enums follow the offer

        offer, self.offer_error = take_offer(user_config, self.meta, first=not self.offer_taken, apply=apply)
        self.offer_taken = self.offer_taken or offer is not None
        if self.local is not None:
            self.local.reconfigure(user_config)

    @api.post("/v1/route", response_model=RouteResponse, response_model_exclude_none=True, responses=errors(403, 422, 503))
    async def route(self, req: RouteRequest):
        try:
            return await self.route_request(req)
        except (GuardError, RouteRefused) as e:
            return _error(e.status, str(e))

    async def route_request(self, req: RouteRequest, whole_prompt: str | None = None) -> RouteResponse:
        """A route, or RouteRefused (GuardError from the prompt limits) with the status and message the
        client gets. `whole_prompt`: the text the prompt was cut from, when it travels whole elsewhere
        (chat's last user message): the text statistics read it, as training read whole prompts."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        prompt = self.limiter.apply(req.prompt)
        wq, wc = req.weights()
        if req.candidates is not None:
            unknown = sorted(set(req.candidates) - set(self.models))
            if unknown:
                raise RouteRefused(422, f"candidates: unknown model(s) {unknown}; known: {self.models}")
        # No preference sent: a named client's own live budget, else its default preference, else the live
        # budget's weight, else the API's.
        preference = [wq, wc] if "preference" in req.model_fields_set else None
        from serve.guard import CLIENT

        candidates, client = req.candidates, CLIENT.get()
        if client is not None:
            if client.name not in self.offer.client_budgets:  # a client's live budget paces it instead
                preference = preference or (list(client.preference) if client.preference else None)
            if refused := client.refusal("candidates", candidates or ()):
                raise RouteRefused(403, refused)
            candidates = candidates or (list(client.candidates) if client.candidates is not None else None)
        item = {"prompt": prompt, "preference": preference, "mode": req.mode, "candidates": candidates,
                "client": client and client.name, "max_latency_s": req.max_latency_s}
        if req.needs:
            item["needs"] = sorted(set(req.needs))
        # The request's input as its provider bills it (the whole prompt, or what the client says it sends),
        # not the encoder's cut: counted only when a limit or a budget's estimate reads it.
        tokens = req.input_tokens
        if tokens is None and (req.max_cost is not None or self.offer.context_windows):
            tokens = self.limiter.count(req.prompt)
        if tokens is not None:
            item["input_tokens"] = tokens
        if self.offer.context_windows:  # what must fit a model's window: the input and the answer's cap, if any
            item["context_tokens"] = tokens + (req.output_tokens or 0)
        if req.max_cost is not None:
            output = req.output_tokens if req.output_tokens is not None else self.answer_tokens
            if output is None:
                raise RouteRefused(422, "output_tokens: required with max_cost, since the checkpoint assumes no single answer length")
            item.update(max_cost=req.max_cost, output_tokens=output)
        if self.reads_text_stats:  # of the whole prompt, as training read it; the encoder reads the cut one
            item["text_stats"] = text_stats([whole_prompt if whole_prompt is not None else req.prompt])[0].tolist()
        try:
            out = await (self.local.route(item) if self.local is not None else _call_with_retry(self.router.route, item))
        except (RayActorError, ActorUnavailableError):
            raise RouteRefused(503, "router: no replica could answer; retry shortly") from None
        if "error" in out:
            raise RouteRefused(out.get("status", 503), out["error"])
        # The replica's own offer, not this ingress's: during a live change the two may differ.
        request_id, model, probabilities = out["request_id"], out["model"], out["probabilities"]
        mode = "greedy" if req.mode == "greedy" else "explore"
        self.metrics.route(model, mode, probabilities, client and client.name)
        for limit in ("cost", "latency", "context"):
            if out.get(f"{limit}_unmet"):
                self.metrics.limit_unmet(limit)
        return RouteResponse(
            request_id=request_id,
            model=model,
            probabilities=probabilities,
            propensity=out["behaviour_prob"],
            mode=mode,
            policy_version=out["policy_version"],
            replica=out["replica"],
            preference=out["preference"],
            latency_unmet=out.get("latency_unmet"),
            cost_unmet=out.get("cost_unmet"),
            context_unmet=out.get("context_unmet"),
        )

    async def withdraw(self, request_id: str) -> None:
        """Take back a decision whose model's provider failed (serve/openai_proxy.py). If the log
        cannot be reached, the decision is retired at its wait time as any unanswered one is."""
        try:
            await _call_with_retry(self.log.withdraw_decisions, [request_id])
        except Exception as e:  # noqa: BLE001 - the client's answer matters more than this bookkeeping
            logger.warning("withdrawing a failed chat route failed: %s", type(e).__name__)

    async def _still_pending(self, request_id: str) -> bool:
        """Whether the request still waits for feedback (the judge's `defer_s` check); if the log
        cannot say, the judge goes ahead (a duplicate is refused by the store anyway)."""
        try:
            return await _call_with_retry(self.log.is_pending, request_id)
        except Exception:  # noqa: BLE001
            return True

    async def _judged_feedback(self, request_id: str, score: float) -> str:
        """The judge's grade as the request's feedback, at the cost the service priced."""
        try:
            res = await _call_with_retry(self.log.record_feedback, request_id, score, None)
        except Exception as e:  # noqa: BLE001 - a lost grade is an unanswered request, nothing worse
            logger.warning("posting a judged score failed: %s", type(e).__name__)
            return "refused"
        if res["ok"]:
            return "scored"
        return "client_first" if res.get("reason") == "duplicate" else "refused"

    async def note_answer_cost(self, request_id: str, cost: float) -> None:
        """Keep a chat answer's price with its decision, so feedback may give the score alone. If the
        log cannot be reached, that feedback must carry the cost, as any other does."""
        try:
            await _call_with_retry(self.log.note_answer_cost, request_id, cost)
        except Exception as e:  # noqa: BLE001 - the answer matters more than this convenience
            logger.warning("keeping a chat answer's cost failed: %s", type(e).__name__)

    @api.post("/v1/feedback", response_model=FeedbackResponse, responses=errors(404, 409, 410, 422, 503))
    async def feedback(self, req: FeedbackRequest):
        from ray.exceptions import ActorUnavailableError, RayActorError

        from serve.guard import CLIENT

        client = CLIENT.get()
        try:
            # After a crash mid-call the first attempt may already be on disk: retries replay, not duplicate.
            res = await _call_with_retry(
                self.log.record_feedback, req.request_id, req.score, req.cost, client=client and client.name,
                latency_s=req.latency_s, retry_kwargs={"replay": True}
            )
        except (RayActorError, ActorUnavailableError):
            return _error(503, "feedback log: unavailable, nothing was recorded; retry shortly")
        if not res["ok"]:
            return _error(res["status"], res["error"])
        return FeedbackResponse(request_id=req.request_id, reward=res["record"]["reward"], sequence=res["record"]["id"])

    @api.post("/v1/feedback/withdraw", response_model=WithdrawResponse, responses=errors(404, 409, 410, 422, 503))
    async def withdraw_route(self, req: WithdrawRequest):
        """No answer to rate for a routed request (the client called the model's provider itself and
        it failed): the decision is taken back, never trained on, as chat failover does."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        try:
            from serve.guard import CLIENT

            client = CLIENT.get()
            res = await _call_with_retry(self.log.withdraw, req.request_id, client and client.name)
        except (RayActorError, ActorUnavailableError):
            return _error(503, "feedback log: unavailable, nothing was withdrawn; retry shortly")
        if not res["ok"]:
            return _error(res["status"], res["error"])
        return WithdrawResponse(request_id=req.request_id)

    @api.get("/v1/models")
    async def models(self) -> dict:
        """The routable models (a named client sees its own), their prices, known context windows and
        capabilities, and barp-auto."""
        from serve.guard import CLIENT

        client = CLIENT.get()
        mine = [m for m in self.models if client is None or client.candidates is None or m in client.candidates]
        windows, capabilities = self.offer.context_windows, self.offer.capabilities
        listed = [{"id": m, "object": "model", "created": 0, "owned_by": "barp-ray", "price_per_mtok": self.prices.get(m) or None,
                   **({"context_window": windows[m]} if m in windows else {}),
                   **({"capabilities": list(capabilities[m])} if m in capabilities else {})} for m in mine]
        listed.append({"id": "barp-auto", "object": "model", "created": 0, "owned_by": "barp-ray"})
        listed += [{"id": alias, "object": "model", "created": 0, "owned_by": "barp-ray", "alias_of": target}
                   for alias, target in self.settings.model_aliases.items() if target == "barp-auto" or target in mine]
        # OpenAI's list shape (`data`), which its clients and chat front-ends read, and `models` as before
        return {"object": "list", "data": listed, "models": listed, "tau": self.tau}

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": len(self.models)}

    @api.get("/v1/stats")
    async def stats(self) -> dict:
        counts = await self.log.counts.remote()
        try:
            trainer = await self.trainer.status.remote()
        except Exception as e:  # noqa: BLE001
            trainer = {"error": type(e).__name__}
        budget = self.offer.budget
        # The paced weight is each router replica's own: this one's (colocated), or one router's (split).
        router = self.local.info() if self.local is not None else await self.router.info.remote()
        return {"log": counts, "trainer": trainer,
                "offer": {"models": self.models, "decision_shrinkage": list(self.offer.decision_shrinkage),
                          "decision_cost_multiplier": self.offer.decision_cost_multiplier,
                          "budget": dataclasses.asdict(budget) if budget else None,
                          "client_budgets": {n: dataclasses.asdict(b) for n, b in self.offer.client_budgets.items()},
                          "context_windows": self.offer.context_windows,
                          "capabilities": {m: list(c) for m, c in self.offer.capabilities.items()},
                          "refused": self.offer_error},
                "pacing": {"replica": router["replica"], **(router["pacing"] or {})} if router["pacing"] else None,
                "client_pacing": router.get("client_pacing") or {},
                # that router replica's encoder outputs kept for repeated prompts (embedding_cache)
                "embedding_cache": {"replica": router["replica"], **router["embedding_cache"]},
                # this ingress replica's breakers (each replica keeps its own): models whose provider failed here
                "upstreams": self.upstream_health.snapshot(),
                # ... its chat requests in flight to each provider, and the caps on them (upstreams.<m>.max_concurrent)
                "upstream_slots": self.upstream_slots.snapshot(),
                # ... and the shortest request each provider refused here as too long for its model (in the router's tokens)
                "context_refusals": self.context_refusals.snapshot(),
                # ... and how fast each provider answered here (a chat request's barp.max_latency_s reads it)
                "upstream_latency": self.upstream_latency.snapshot(),
                "clients": {c.name: c.public() for c in self.clients.values()},
                "clients_refused": self.clients_error}

    @api.post("/v1/admin/train", responses=errors(403, 503))
    async def train_now(self) -> dict:
        try:
            rows = await self.trainer.train_now.remote()
        except Exception as e:  # noqa: BLE001 - the update raised: its error, not a traceback (`/v1/stats` trainer.failing keeps it)
            logger.warning("admin train: %r", e)
            cause = getattr(e, "cause", None) or e
            return _error(503, f"trainer: the update failed ({type(cause).__name__}: {str(cause)[:300]}); "
                               "the published weights stay")
        return {"updates": rows}

    @api.post("/v1/admin/load_checkpoint", response_model=LoadCheckpointResponse, responses=errors(403, 404, 409, 422, 503))
    async def load_checkpoint(self, req: LoadCheckpointRequest):
        """Publish a checkpoint's weights now: 404 if nothing is at the path, 422 if it is not a
        checkpoint this service can serve, 409 if `gated` and the gate refuses it or has too few
        held-back rewards to judge (the old weights stay)."""
        res = await self.trainer.load_checkpoint.remote(req.path, req.mode)
        if not res["ok"]:
            return _error(res["status"], res["error"])
        return LoadCheckpointResponse(policy_version=res["version"], published=res["published"], estimate=res["estimate"])

    @api.get("/v1/admin/processes", responses={s: {"model": ErrorBody} for s in (401, 403)})
    async def processes(self) -> dict:
        """PIDs of the serving processes, for fault drills (tests kill them on purpose)."""
        import os

        infos: dict[int, dict] = {}
        if self.local is not None:  # Serve sends the handle calls below to the other, idler replicas
            infos[os.getpid()] = self.local.info()
        ctx = serve.get_replica_context()
        # colocated: the routers are this deployment's own replicas
        routers = self.router if self.router is not None else serve.get_deployment_handle(ctx.deployment, ctx.app_name)
        for _ in range(24):  # requests spread over replicas: collect every router we can see
            info = await routers.info.remote()
            infos[info["pid"]] = info
        try:
            trainer = await self.trainer.pid.remote()
        except Exception:  # noqa: BLE001 - a drill may have just killed it
            trainer = None
        return {"ingress": os.getpid(), "feedback_log": await self.log.pid.remote(),
                "trainer": trainer, "router": sorted(infos),
                "router_versions": {str(k): v["policy_version"] for k, v in infos.items()},
                "router_started_versions": {str(k): v["started_version"] for k, v in infos.items()}}

    def info(self) -> dict:
        """This replica's router (colocated topology), for /v1/admin/processes."""
        return self.local.info()

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "the completion (JSON), or with stream: true server-sent chunks"},
                         **errors(403, 404, 422, 429, 502, 503, 504, body=ChatErrorBody)})
    async def chat(self, req: ChatCompletionRequest):
        """OpenAI chat completions; model barp-auto routes. 4xx the upstream answered pass through."""
        from serve.openai_proxy import ChatProxyError, forward_chat

        try:
            return await forward_chat(self, req)
        except ChatProxyError as e:
            return _error(e.status, str(e), CHAT_PATH, e.code, e.headers)

    @api.post(RESPONSES_PATH, response_model=ResponseObject,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "the Response (JSON), or with stream: true the Responses API's events"},
                         **errors(403, 404, 422, 429, 502, 503, 504, body=ChatErrorBody)})
    async def responses(self, req: ResponsesRequest):
        """OpenAI's Responses API, answered by the chat models (serve/responses_api.py); model barp-auto routes."""
        from serve.openai_proxy import ChatProxyError, forward_chat
        from serve.responses_api import as_response, chat_request

        try:
            return as_response(req, await forward_chat(self, chat_request(req)), self.prices)
        except ChatProxyError as e:
            return _error(e.status, str(e), RESPONSES_PATH, e.code, e.headers)

    @api.post(MESSAGES_PATH, response_model=MessageObject,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "the message (JSON), or with stream: true the Messages API's events"},
                         **errors(403, 404, 422, 429, 502, 503, 504, body=MessagesErrorBody)})
    async def messages(self, req: MessagesRequest):
        """Anthropic's Messages API, answered by the chat models (serve/anthropic_messages.py); model barp-auto routes."""
        from serve.anthropic_messages import as_message, chat_request
        from serve.openai_proxy import ChatProxyError, forward_chat

        try:
            return as_message(req, await forward_chat(self, chat_request(req)), self.prices)
        except ChatProxyError as e:
            return _error(e.status, str(e), MESSAGES_PATH, e.code, e.headers)

    @api.post(MESSAGES_PATH + "/count_tokens", response_model=TokenCountResponse, responses=errors(body=MessagesErrorBody))
    async def count_tokens(self, req: CountTokensRequest) -> TokenCountResponse:
        """Anthropic's token count, by the router's own tokenizer (an estimate of the provider's)."""
        from serve.anthropic_messages import counted_tokens

        return TokenCountResponse(input_tokens=counted_tokens(self, req))


def checked_app(args: dict[str, Any] | None, environment: bool = True) -> tuple[ServeSettings, dict, dict]:
    """(settings, the checkpoint's meta, the live offer given in `args`): everything a deploy can refuse
    before it starts anything, as SettingsError naming the field. `environment`: also the API, admin and
    clients' tokens and the providers' keys, read from this process's environment and files (the
    replicas read their own)."""
    args = dict(args or {})
    # live: user_config (reconfigure in place), not deployment arguments (a rolling restart)
    live = {k: v for k in LIVE_KEYS if (v := args.pop(k, None)) is not None}
    settings = settings_from_args(args).absolute()
    from barp_ray.policy import META_FILE

    try:  # fail at deploy time, not on the first request
        meta = read_meta(settings.checkpoint)
    except (OSError, ValueError):  # missing (FileNotFoundError), unreachable or unreadable
        raise SettingsError(f"checkpoint: {settings.checkpoint} is not a barp-ray checkpoint (no {META_FILE})") from None
    live_offer(live, meta)  # refused here, before anything is deployed
    if clash := sorted(set(settings.model_aliases) & set(meta["models"])):
        raise SettingsError(f"model_aliases: {clash} are the checkpoint's own model names, not aliases")  # they would never apply
    if not environment:
        return settings, meta, live
    try:
        load_token(settings.auth)
        load_admin_token(settings.auth)
        load_clients(settings.auth, list(meta["models"]))
    except GuardError as e:
        raise SettingsError(str(e)) from None
    from serve.upstream import UpstreamError, auth_headers

    try:  # a missing provider key fails the deploy, not the first paying request
        for name, up in settings.upstreams.items():
            auth_headers(name, up)
    except UpstreamError as e:
        raise SettingsError(str(e)) from None
    return settings, meta, live


def app_builder(args: dict[str, Any] | None = None):
    """Entry point for `serve run` / `serve deploy` (import_path: serve.app:app_builder)."""
    settings, _, live = checked_app(args)
    trainer = TrainerDeployment.options(user_config=live).bind(settings)
    log = FeedbackLogDeployment.bind(settings)
    if settings.topology == "colocated":  # the ingress routes: it scales and reserves CPU as the router would
        return RouterAPI.options(user_config=live, autoscaling_config=settings.router_autoscaling,
                                 ray_actor_options=RouterModel.ray_actor_options).bind(settings, None, log, trainer)
    router = RouterModel.options(autoscaling_config=settings.router_autoscaling, user_config=live).bind(settings, trainer, log)
    return RouterAPI.options(user_config=live).bind(settings, router, log, trainer)

