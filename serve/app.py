"""The Ray Serve application: HTTP API -> batched router replicas, feedback log, continuous trainer.

    RouterAPI (FastAPI ingress) --route--> RouterModel (autoscaling, @serve.batch: encoder + policy)
              |--decision/feedback--> FeedbackLogDeployment (durable JSONL, one replica)
    TrainerDeployment (one replica) reads the reward log, updates, checkpoints, and hands new
    weights to every RouterModel replica, which polls it; if the trainer is down, replicas keep
    serving their last good weights.

Deploy: `serve run configs/serve.yaml` / `serve deploy configs/serve.yaml`, or from Python:
`serve.run(app_builder({...}))`.
"""

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from serve.schemas import ErrorBody, FeedbackRequest, FeedbackResponse, RouteRequest, RouteResponse
from serve.settings import ServeSettings, settings_from_args

logger = logging.getLogger("ray.serve")


def _load_meta(checkpoint: str) -> dict:
    from barp_ray.policy import META_FILE

    return json.loads((Path(checkpoint) / META_FILE).read_text())


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1})
class FeedbackLogDeployment:
    def __init__(self, settings: ServeSettings):
        from serve.feedback_log import FeedbackLog

        self.log = FeedbackLog(settings.log_dir, tau=float(_load_meta(settings.checkpoint)["tau"]))

    def record_decision(self, decision: dict) -> None:
        self.log.record_decision(decision)

    def record_feedback(self, request_id: str, score: float, cost: float) -> dict:
        from serve.feedback_log import FeedbackError

        try:
            return {"ok": True, "record": self.log.record_feedback(request_id, score, cost)}
        except FeedbackError as e:
            return {"ok": False, "status": e.status, "error": str(e)}

    def counts(self) -> dict:
        return self.log.counts()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
class TrainerDeployment:
    async def __init__(self, settings: ServeSettings):
        from serve.trainer import ContinuousTrainer

        self.settings = settings
        self.trainer = ContinuousTrainer(settings.checkpoint, settings.log_dir, settings.trainer.state_dir, settings.trainer)
        self._lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._loop()) if settings.trainer.enabled else None

    async def _step(self) -> dict | None:
        async with self._lock:
            return await asyncio.to_thread(self.trainer.train_once)

    async def _loop(self) -> None:
        while True:
            try:
                row = await self._step()
            except Exception:  # noqa: BLE001 - a bad batch must not kill the loop
                logger.exception("continuous trainer update failed")
                row = None
            if row is None:
                await asyncio.sleep(self.settings.trainer.poll_s)

    async def train_now(self, max_updates: int = 1_000_000) -> list[dict]:
        """Drain every full batch now (admin and tests); the background loop does the same lazily."""
        rows = []
        while len(rows) < max_updates and (row := await self._step()) is not None:
            rows.append(row)
        return rows

    def get_weights(self, have_version: int) -> tuple[int, dict] | None:
        if self.trainer.version <= have_version:
            return None
        return self.trainer.version, self.trainer.weights()

    def status(self) -> dict:
        return {"version": self.trainer.version, "offset": self.trainer.offset, "updates": len(self.trainer.updates)}


@serve.deployment(
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
)
class RouterModel:
    async def __init__(self, settings: ServeSettings, trainer):
        import torch

        from barp_ray.encoder import load_encoder
        from barp_ray.policy import RoutingPolicy

        torch.set_num_threads(1)
        self.settings = settings
        self.policy = RoutingPolicy.load(settings.checkpoint)
        self.version = 0
        self.trainer = trainer
        self.replica = serve.get_replica_context().replica_id.unique_id
        load_encoder(self.policy.encoder, "cpu")  # warm: the first request should not pay for it
        self.route_batch.set_max_batch_size(settings.max_batch_size)
        self.route_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._rng = np.random.default_rng()
        self._poll = asyncio.get_running_loop().create_task(self._poll_weights())

    async def _poll_weights(self) -> None:
        import torch

        while True:
            try:
                got = await self.trainer.get_weights.remote(self.version)
                if got is not None:
                    version, weights = got
                    self.policy.module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
                    self.version = version
            except Exception as e:  # noqa: BLE001 - trainer down: keep serving the last good weights
                logger.warning("weights poll failed (%s); serving policy_version %d", type(e).__name__, self.version)
            await asyncio.sleep(self.settings.weights_poll_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def route_batch(self, items: list[dict]) -> list[dict]:
        from barp_ray.encoder import encode

        emb = encode([it["prompt"] for it in items], self.policy.encoder)
        probs = self.policy.probabilities(emb, np.asarray([it["preference"] for it in items], dtype=np.float32))
        version = self.version
        out = []
        for it, e, p in zip(items, emb, probs):
            mask = it.get("mask")
            if mask is not None:
                p = np.where(mask, p, 0.0)
                p = p / p.sum() if p.sum() > 0 else np.asarray(mask, dtype=np.float64) / np.sum(mask)
            if it["mode"] == "sample":
                a = int(self._rng.choice(len(p), p=p / p.sum()))
                behaviour = float(p[a])
            else:
                a = int(np.argmax(p))
                behaviour = 1.0  # deterministic choice
            out.append({"action": a, "probabilities": p.tolist(), "behaviour_prob": behaviour,
                        "embedding": e, "policy_version": version, "replica": self.replica})
        return out

    async def route(self, item: dict) -> dict:
        return await self.route_batch(item)

    def info(self) -> dict:
        return {"replica": self.replica, "policy_version": self.version}


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
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return JSONResponse(status_code=422, content={"error": "; ".join(parts)})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(api)
class RouterAPI:
    def __init__(self, settings: ServeSettings, router, log, trainer):
        self.settings = settings
        self.router, self.log, self.trainer = router, log, trainer
        meta = _load_meta(settings.checkpoint)
        self.models: list[str] = list(meta["models"])
        self.prices: dict = meta.get("prices", {})
        self.tau = float(meta["tau"])

    @api.post("/v1/route", response_model=RouteResponse, responses={422: {"model": ErrorBody}})
    async def route(self, req: RouteRequest):
        wq, wc = req.weights()
        mask = None
        if req.candidates is not None:
            unknown = sorted(set(req.candidates) - set(self.models))
            if unknown:
                return _error(422, f"candidates: unknown model(s) {unknown}; known: {self.models}")
            mask = [m in set(req.candidates) for m in self.models]
        out = await self.router.route.remote({"prompt": req.prompt, "preference": [wq, wc], "mode": req.mode, "mask": mask})
        from serve.feedback_log import encode_vector

        request_id = uuid.uuid4().hex
        model = self.models[out["action"]]
        await self.log.record_decision.remote(
            {
                "request_id": request_id,
                "time": time.time(),
                "embedding": encode_vector(out["embedding"]),
                "preference": [wq, wc],
                "model": model,
                "behaviour_prob": out["behaviour_prob"],
                "mode": req.mode,
                "policy_version": out["policy_version"],
            }
        )
        return RouteResponse(
            request_id=request_id,
            model=model,
            probabilities=dict(zip(self.models, out["probabilities"])),
            policy_version=out["policy_version"],
            replica=out["replica"],
        )

    @api.post("/v1/feedback", response_model=FeedbackResponse, responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    async def feedback(self, req: FeedbackRequest):
        res = await self.log.record_feedback.remote(req.request_id, req.score, req.cost)
        if not res["ok"]:
            return _error(res["status"], res["error"])
        return FeedbackResponse(request_id=req.request_id, reward=res["record"]["reward"])

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"models": [{"id": m, "price_per_mtok": self.prices.get(m)} for m in self.models] + [{"id": "barp-auto"}],
                "tau": self.tau}

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
        return {"log": counts, "trainer": trainer}

    @api.post("/v1/admin/train")
    async def train_now(self) -> dict:
        rows = await self.trainer.train_now.remote()
        return {"updates": rows}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        from serve.openai_proxy import ChatProxyError, forward_chat

        try:
            body = await request.json()
        except Exception:  # noqa: BLE001
            return _error(400, "body: not valid JSON")
        try:
            return await forward_chat(self, body)
        except ChatProxyError as e:
            return _error(e.status, str(e))


def app_builder(args: dict[str, Any] | None = None):
    """Entry point for `serve run` / `serve deploy` (import_path: serve.app:app_builder)."""
    settings = settings_from_args(args).absolute()
    from barp_ray.policy import META_FILE
    from serve.settings import SettingsError

    if not (Path(settings.checkpoint) / META_FILE).is_file():  # fail at deploy time, not on the first request
        raise SettingsError(f"checkpoint: {settings.checkpoint} is not a barp-ray checkpoint (no {META_FILE})")
    trainer = TrainerDeployment.bind(settings)
    log = FeedbackLogDeployment.bind(settings)
    router = RouterModel.options(autoscaling_config=settings.router_autoscaling).bind(settings, trainer)
    return RouterAPI.bind(settings, router, log, trainer)
