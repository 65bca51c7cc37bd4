"""Arguments of the Serve application (`args:` in configs/serve.yaml), typed and validated.

Errors are one line naming the field, like the training config, so `serve run` fails readably.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barp_ray.config import PRICE_HEADS, SHRINKAGE_GATES, cost_multiplier_problem
from barp_ray.policy import stated_answer_tokens
from barp_ray.storage import is_uri


class SettingsError(ValueError):
    pass


@dataclass
class ExplorationSettings:
    """The service's exploring policy: mu = (1 - epsilon) * pi^(1/temperature) + epsilon * uniform
    over the models a request allows. Default chosen by bench/online_adapt.py (docs/results/online_adapt)."""

    epsilon: float = 0.1
    temperature: float = 1.0
    # After the trainer forgets a changed world (trainer.drift_z), routes explore at least this
    # much until this many new rewards arrived: the models that are best now are found sooner.
    after_forget_epsilon: float = 0.3
    after_forget_rewards: int = 300  # 0: no boost

    def validate(self) -> None:
        for name in ("epsilon", "after_forget_epsilon"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise SettingsError(f"exploration.{name}: must be a number in [0, 1], got {v!r}")
        v = self.after_forget_rewards
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SettingsError(f"exploration.after_forget_rewards: must be an integer >= 0, got {v!r}")
        _pos("exploration.temperature", self.temperature)


@dataclass
class FeedbackSettings:
    """Missing feedback: after `wait_s` a decision is retired, dropped or closed with `default_reward`."""

    wait_s: float = 600.0
    on_missing: str = "drop"  # drop | default
    default_reward: float = 0.0
    retire_every_s: float = 5.0
    # Where decisions and rewards live: "sqlite" (a file under log_dir, one machine) or
    # "postgresql" (a cluster). The connection string is a secret: it is read from the file
    # `database_url_file` names, else from the environment variable `database_url_env`.
    database: str = "sqlite"
    database_url_env: str = "BARP_DATABASE_URL"
    database_url_file: str | None = None

    def validate(self) -> None:
        _pos("feedback.wait_s", self.wait_s)
        if self.database not in ("sqlite", "postgresql"):
            raise SettingsError(f"feedback.database: must be 'sqlite' or 'postgresql', got {self.database!r}")
        if self.on_missing not in ("drop", "default"):
            raise SettingsError(f"feedback.on_missing: must be 'drop' or 'default', got {self.on_missing!r}")
        if isinstance(self.default_reward, bool) or not isinstance(self.default_reward, (int, float)) \
                or not -1 <= self.default_reward <= 1:
            raise SettingsError(f"feedback.default_reward: must be a number in [-1, 1], got {self.default_reward!r}")
        _pos("feedback.retire_every_s", self.retire_every_s)


@dataclass
class TrainerSettings:
    """Continuous training on RLlib's Learner: replay of the newest `window` joined rewards (half of
    each minibatch from the newest `recent_window`), an update whenever `min_batch` new rewards
    arrived (or the oldest waited `max_wait_s`), the offline loss with a per-model critic and
    clipped importance weights. An update takes `replay_ratio` trained samples per new reward
    (ceil(new * replay_ratio / minibatch_size) steps, at most `max_steps_per_update`), so how much
    the policy learns from a reward does not depend on how often a busy or slow machine updates."""

    enabled: bool = True
    lr: float = 1e-3
    entropy_coeff: float = 0.01
    importance_weight_clip: float = 2.0  # served data came from an older, exploring policy: clip pi/mu
    baseline_coeff: float = 0.5
    critic_kl_coeff: float = 1.0
    critic_temperature: float = 0.1
    window: int = 1024
    recent_window: int = 256  # half of every minibatch comes from the newest this many (0: uniform)
    drift_z: float = 5.0  # served answers' score fell this many standard errors: forget the replay before the fall (0: never)
    drift_min_drop: float = 0.1  # ... and by at least this much score
    replay_ratio: float = 128.0  # samples trained per new reward (16 new rewards -> 8 steps of 256)
    # > 0: the ratio falls as replay_ratio * d / (d + n), n the rewards trained since the service
    # started, last forgot a changed world or was offered another model set (0: constant). Fast while
    # the world is new, then steady (bench/live_unseen_tasks.py: docs/results/live_unseen_tasks).
    replay_decay: float = 250.0
    # > 0: the loss also pulls toward the checkpoint's own distribution, weighted
    # anchor_weight * anchor_fade / (anchor_fade + n), until the live critic's greedy choice beats the
    # checkpoint by anchor_gate_z standard errors on rewards it had not yet trained on (at least
    # anchor_gate_min of them), a forget, a new model set or an operator's checkpoint
    # (serve/checkpoint_anchor.py). A safer start on tasks near the checkpoint's, a slower one where
    # it is confidently wrong: 0 (off) by default.
    anchor_weight: float = 0.0
    anchor_fade: float = 250.0
    anchor_gate_z: float = 2.0
    anchor_gate_min: int = 32
    max_steps_per_update: int = 64
    max_busy_fraction: float = 1.0  # share of one core the background trainer may keep busy (1: no limit)
    minibatch_size: int = 256
    min_batch: int = 16
    max_wait_s: float = 2.0
    poll_s: float = 0.25
    num_learners: int = 0
    num_gpus_per_learner: float = 0
    state_dir: str = "runs/serve/trainer"  # a path or a storage URI (pyarrow.fs: s3://bucket/prefix)

    def validate(self) -> None:
        for name in ("lr", "importance_weight_clip", "critic_temperature", "window", "replay_ratio",
                     "max_steps_per_update", "anchor_fade", "anchor_gate_min",
                     "minibatch_size", "min_batch", "max_wait_s", "poll_s"):
            _pos(f"trainer.{name}", getattr(self, name))
        if isinstance(self.max_busy_fraction, bool) or not isinstance(self.max_busy_fraction, (int, float)) \
                or not 0 < self.max_busy_fraction <= 1:
            raise SettingsError(f"trainer.max_busy_fraction: must be in (0, 1], got {self.max_busy_fraction!r}")
        for name in ("entropy_coeff", "baseline_coeff", "critic_kl_coeff", "recent_window", "num_learners",
                     "num_gpus_per_learner", "drift_z", "drift_min_drop", "replay_decay", "anchor_weight",
                     "anchor_gate_z"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise SettingsError(f"trainer.{name}: must be a number >= 0, got {v!r}")


ESTIMATORS = ("sndr", "dr", "snips")  # self-normalised doubly robust, doubly robust, self-normalised IPS


@dataclass
class RolloutSettings:
    """Safe rollout: a candidate is refused only if its off-policy estimate on held-back feedback
    (`estimator`: doubly robust with the trainer's critic, or self-normalised IPS) is worse than
    the serving weights', or any of the `references` latest published versions', by more than
    `margin` with one-sided `confidence` (a paired test on the held-back records; 0.5 compares
    the point estimates alone). Several yardsticks, because against the serving weights alone a
    run of individually insignificant steps can drift anywhere."""

    enabled: bool = True
    estimator: str = "sndr"  # sndr | dr | snips
    holdout_fraction: float = 0.1  # of joined feedback, by request id, never trained on
    eval_window: int = 512  # newest held-back records used for the estimate
    half_life: float = 32  # held-back records; a record this much older than the newest counts half (0: equal)
    min_eval: int = 100  # below this many, candidates are published unchecked
    margin: float = 0.05
    confidence: float = 0.95
    references: int = 4  # latest published versions a candidate must not be clearly worse than

    def validate(self) -> None:
        if isinstance(self.references, bool) or not isinstance(self.references, int) or self.references < 1:
            raise SettingsError(f"rollout.references: must be an integer >= 1, got {self.references!r}")
        if not 0 < self.holdout_fraction < 1:
            raise SettingsError(f"rollout.holdout_fraction: must be in (0, 1), got {self.holdout_fraction!r}")
        if self.estimator not in ESTIMATORS:
            raise SettingsError(f"rollout.estimator: must be one of {list(ESTIMATORS)}, got {self.estimator!r}")
        _pos("rollout.eval_window", self.eval_window)
        _pos("rollout.min_eval", self.min_eval)
        if isinstance(self.half_life, bool) or not isinstance(self.half_life, (int, float)) or self.half_life < 0:
            raise SettingsError(f"rollout.half_life: must be a number >= 0, got {self.half_life!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or self.margin < 0:
            raise SettingsError(f"rollout.margin: must be a number >= 0, got {self.margin!r}")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) or not 0.5 <= self.confidence < 1:
            raise SettingsError(f"rollout.confidence: must be a number in [0.5, 1), got {self.confidence!r}")


@dataclass
class AuthSettings:
    """Where the bearer token comes from. There is no default token: one source must be named,
    or auth explicitly disabled (local experiments only)."""

    token_env: str | None = "BARP_API_TOKEN"  # environment variable holding the token
    token_file: str | None = None  # or a secrets file (first line); wins over token_env
    # A second token for /v1/admin/* (publishing weights, training now): when either is set, only it
    # opens those, and the API token clients hold gets a 403 there. Unset: the API token does both.
    admin_token_env: str | None = None
    admin_token_file: str | None = None
    # Named clients (teams, apps), a YAML secrets file: {name: {token, preference?, candidates?}}. A
    # client's token opens routing, chat and feedback (not stats or admin); its routes are logged under
    # its name, take its default preference and stay within its models; it rates only its own routes.
    clients_file: str | None = None
    require_for_route: bool = False  # /v1/route too
    # /v1/chat/completions, /v1/responses and /v1/messages spend money on the upstream models: open only behind your own gateway.
    require_for_chat: bool = True
    disabled: bool = False

    def validate(self) -> None:
        if not self.disabled and not (self.token_env or self.token_file):
            raise SettingsError("auth: name token_env or token_file (or set disabled: true for local use)")


@dataclass
class UpstreamSettings:
    """One model's OpenAI-compatible endpoint. The key is read by each ingress replica from its own
    environment or a secrets file (as the API token is), so it never travels in Serve's config."""

    base_url: str  # may carry a query (Azure's ?api-version=...): it is kept after the /chat/completions path
    api_key_env: str | None = None  # environment variable holding the provider's key
    api_key_file: str | None = None  # or a secrets file (first line); wins over api_key_env
    api_key_header: str = "authorization"  # "authorization" sends "Bearer <key>"; any other header gets the bare key (e.g. api-key)
    model: str | None = None  # the provider's id for this model (e.g. meta-llama/Llama-3.3-70B-Instruct-Turbo); default: the name routed
    headers: dict = field(default_factory=dict)  # other fixed headers the provider asks for (not secrets: they sit in the config)
    # Requests in flight to this provider per ingress replica (serve/upstream_slots.py); None: no cap.
    max_concurrent: int | None = None
    timeout_s: float | None = None  # this provider's upstream_timeout_s (a slow large model, a fast small one); None: the service's
    # Fields every request to this provider carries unless the request sets them (OpenRouter's `provider`,
    # vLLM's `chat_template_kwargs`, a reasoning model's `reasoning_effort`).
    body: dict = field(default_factory=dict)

    def validate(self, name: str) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise SettingsError(f"upstreams.{name}: must be an http(s) base URL, got {self.base_url!r}")
        if not isinstance(self.api_key_header, str) or not self.api_key_header.strip():
            raise SettingsError(f"upstreams.{name}.api_key_header: must be a header name")
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise SettingsError(f"upstreams.{name}.model: must be the provider's model id, got {self.model!r}")
        if not isinstance(self.headers, dict):
            raise SettingsError(f"upstreams.{name}.headers: must map header names to values, got {self.headers!r}")
        for header, value in self.headers.items():
            if not isinstance(header, str) or not header.strip() or not isinstance(value, str) \
                    or any(c in header + value for c in "\r\n"):
                raise SettingsError(f"upstreams.{name}.headers: {header!r}: must be a header name and a one-line text value")
            if header.lower() in ("authorization", self.api_key_header.lower()):
                raise SettingsError(f"upstreams.{name}.headers.{header}: the key's header; give the key with api_key_env or "
                                    f"api_key_file, never in the config")
        if self.timeout_s is not None:
            _pos(f"upstreams.{name}.timeout_s", self.timeout_s)
        if not isinstance(self.body, dict) or not all(isinstance(k, str) for k in self.body):
            raise SettingsError(f"upstreams.{name}.body: must map request fields to values, got {self.body!r}")
        try:
            json.dumps(self.body, allow_nan=False)
        except (TypeError, ValueError):
            raise SettingsError(f"upstreams.{name}.body: must hold JSON values only (a YAML date or NaN is not one), "
                                f"got {self.body!r}") from None
        if owned := sorted(set(self.body) & {"model", "messages", "stream", "stream_options", "barp"}):
            raise SettingsError(f"upstreams.{name}.body.{owned[0]}: set by the service or the client, not the config "
                                f"(the provider's model id is upstreams.{name}.model)")
        if self.max_concurrent is not None and (isinstance(self.max_concurrent, bool) or not isinstance(self.max_concurrent, int)
                                                or self.max_concurrent < 1):
            raise SettingsError(f"upstreams.{name}.max_concurrent: must be an integer >= 1 (requests in flight per ingress "
                                f"replica) or null, got {self.max_concurrent!r}")


def _upstream(name: str, raw: Any) -> UpstreamSettings:
    if isinstance(raw, UpstreamSettings):
        return raw
    if isinstance(raw, str):
        return UpstreamSettings(base_url=raw)
    if not isinstance(raw, dict):
        raise SettingsError(f"upstreams.{name}: must be a base URL or a mapping with base_url, got {raw!r}")
    _check_keys(f"upstreams.{name}", raw, UpstreamSettings)
    if "base_url" not in raw:
        raise SettingsError(f"upstreams.{name}.base_url: required")
    return UpstreamSettings(**raw)


@dataclass
class LimitSettings:
    """A route's body holds a prompt only the router reads, so it stays small; a chat body goes whole
    to a provider (a long document, images as data URLs) and gets its own, larger limit. A chat's
    last user message is cut for routing to what the route limits allow, never refused for its length."""

    max_body_bytes: int = 64 * 1024
    max_chat_body_bytes: int = 8 * 1024 * 1024
    max_prompt_bytes: int = 32 * 1024
    max_prompt_tokens: int = 512  # MiniLM reads 256; longer prompts are cut or refused
    long_prompt: str = "truncate"  # truncate | reject

    def validate(self) -> None:
        _pos("limits.max_body_bytes", self.max_body_bytes)
        _pos("limits.max_chat_body_bytes", self.max_chat_body_bytes)
        _pos("limits.max_prompt_bytes", self.max_prompt_bytes)
        _pos("limits.max_prompt_tokens", self.max_prompt_tokens)
        if self.long_prompt not in ("truncate", "reject"):
            raise SettingsError(f"limits.long_prompt: must be 'truncate' or 'reject', got {self.long_prompt!r}")


@dataclass
class FailoverSettings:
    """barp-auto chat when the chosen model's provider fails (unreachable, 5xx, a refused key, 429,
    no answer in time, a 200 that is not JSON): the failed route is withdrawn from the feedback store
    and the request is routed again among the models not yet tried, up to `attempts` models in all.
    A model that failed `failures_to_open` times in a row is left out of barp-auto's candidates for
    `cooldown_s` (serve/upstream_health.py says why per ingress replica). A 429 that says when to come
    back (`Retry-After`, `retry-after-ms`) leaves the model out for that long instead, at most
    `max_retry_after_s`, without charging its breaker."""

    attempts: int = 2  # models tried per barp-auto chat request, the first included; 1: no failover
    failures_to_open: int = 3
    cooldown_s: float = 30.0
    max_retry_after_s: float = 60.0

    def validate(self) -> None:
        for name in ("attempts", "failures_to_open"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SettingsError(f"failover.{name}: must be an integer >= 1, got {v!r}")
        _pos("failover.cooldown_s", self.cooldown_s)
        _pos("failover.max_retry_after_s", self.max_retry_after_s)


@dataclass
class LatencySettings:
    """How a model's speed is judged for a latency limit (serve/upstream_latency.py): the `quantile`
    of its last `window` timed answers, once it has `min_samples` of them. Chat's `barp.max_latency_s`
    reads each ingress replica's own timings; a route's `max_latency_s` the latencies clients report
    with feedback, which the trainer keeps the same way."""

    window: int = 100
    quantile: float = 0.9
    min_samples: int = 5

    def validate(self) -> None:
        for name in ("window", "min_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SettingsError(f"latency.{name}: must be an integer >= 1, got {v!r}")
        if isinstance(self.quantile, bool) or not isinstance(self.quantile, (int, float)) or not 0 < self.quantile <= 1:
            raise SettingsError(f"latency.quantile: must be a number in (0, 1], got {self.quantile!r}")
        if self.min_samples > self.window:
            raise SettingsError(f"latency.min_samples: must be at most latency.window ({self.window}), got {self.min_samples}")


JUDGE_INSTRUCTIONS = ("You grade an AI assistant's answer to a user's request. Judge correctness first, then "
                      "helpfulness and concision. Reply with one integer from 0 (wrong or useless) to 10 (fully "
                      "correct and helpful), and nothing else.")


@dataclass
class JudgeSettings:
    """Feedback without a client: a `share` of barp-auto's chat answers graded by `model` (any model
    under `upstreams`), the grade / 10 posted as the answer's score (serve/judge.py says what it
    sees and when not to use it). Off while `model` is unset."""

    model: str | None = None
    share: float = 1.0
    max_concurrent: int = 8  # gradings in flight per ingress replica; an answer beyond them is not graded
    max_answer_chars: int = 8000  # the answer is cut to this for the judge
    instructions: str = JUDGE_INSTRUCTIONS
    # Seconds to wait before grading: a client's own score that arrives first is kept and the judge
    # is not called. 0: grade at once (then a client's later score is a duplicate).
    defer_s: float = 0.0

    def validate(self, upstreams: dict) -> None:
        if self.model is not None and self.model not in upstreams:
            raise SettingsError(f"judge.model: needs an entry under upstreams, got {self.model!r}; upstreams: {sorted(upstreams)}")
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share <= 1:
            raise SettingsError(f"judge.share: must be a number in (0, 1], got {self.share!r}")
        for name in ("max_concurrent", "max_answer_chars"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SettingsError(f"judge.{name}: must be an integer >= 1, got {v!r}")
        if not isinstance(self.instructions, str) or not self.instructions.strip():
            raise SettingsError("judge.instructions: must be a non-empty string")
        if isinstance(self.defer_s, bool) or not isinstance(self.defer_s, (int, float)) or not 0 <= self.defer_s <= 3600:
            raise SettingsError(f"judge.defer_s: must be a number of seconds in [0, 3600], got {self.defer_s!r}")


@dataclass
class RetentionSettings:
    """How long joined rewards stay in the feedback store's database. Off by default (all kept). A
    reward leaves when it is not among the newest `keep_rewards` or is older than `max_age_days`,
    and only once the trainer has saved its state past it (the trainer keeps its read position in
    the store, as a queue consumer commits its offset), so training never misses one. With
    `archive` (a path or storage URI) the rewards leaving are first written there as Parquet files,
    which `barp replay`, `barp ope` and `barp import-feedback` read; without it they are deleted."""

    keep_rewards: int | None = None
    max_age_days: float | None = None
    archive: str | None = None
    every_s: float = 300.0
    batch: int = 50_000  # rewards per archive file (fewer only for those past max_age_days), and the most per delete

    def validate(self) -> None:
        if self.keep_rewards is not None and (isinstance(self.keep_rewards, bool) or not isinstance(self.keep_rewards, int)
                                              or self.keep_rewards < 1):
            raise SettingsError(f"retention.keep_rewards: must be an integer >= 1 or null (keep all), got {self.keep_rewards!r}")
        if self.max_age_days is not None:
            _pos("retention.max_age_days", self.max_age_days)
        if self.archive is not None and (not isinstance(self.archive, str) or not self.archive.strip()):
            raise SettingsError(f"retention.archive: must be a path or storage URI, or null (delete), got {self.archive!r}")
        _pos("retention.every_s", self.every_s)
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise SettingsError(f"retention.batch: must be an integer >= 1, got {self.batch!r}")

    @property
    def enabled(self) -> bool:
        return self.keep_rewards is not None or self.max_age_days is not None


TOPOLOGIES = ("colocated", "split")
# What `user_config` may set live, and the deployments that take it in each topology.
LIVE_KEYS = ("models", "prices", "decision_shrinkage", "decision_shrinkage_gate", "decision_cost_multiplier", "budget",
             "client_budgets", "context_windows", "capabilities")
# What a chat request may need of a model beyond text, as OpenAI's API asks for it (serve/openai_proxy.py reads them).
CAPABILITIES = ("vision", "audio", "tools", "json_mode", "json_schema")
LIVE_OFFER_DEPLOYMENTS = {"colocated": ("RouterAPI", "TrainerDeployment"),
                          "split": ("RouterModel", "RouterAPI", "TrainerDeployment")}


def alias_pattern(alias: str) -> str:
    """A `*` alias as a regular expression that Python and JSON Schema (ECMA) read alike."""
    return "^" + ".*".join(re.sub(r"([.^$+?()\[\]{}|\\])", r"\\\1", part) for part in alias.split("*")) + "$"


@dataclass
class ServeSettings:
    checkpoint: str = "checkpoints/barp-default"
    log_dir: str = "runs/serve/log"  # the feedback store (feedback.sqlite3)
    weights_poll_s: float = 1.0  # how often replicas look for newer published weights
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    # colocated: the ingress replicas route themselves, no deployment call on a route (lowest latency);
    # split: HTTP ingress -> RouterModel replicas (routers placed and scaled apart from the ingress,
    # and a router replica's death is retried by the ingress)
    topology: str = "colocated"
    lone_route_threads: int = 0  # torch threads for a route alone in its router replica; 0: the CPUs Ray reserved (batches always use those)
    embedding_cache: int = 4096  # prompts whose h(x) each router replica keeps, so a repeat skips the encoder (0: off)
    upstreams: dict = field(default_factory=dict)  # model name -> base URL, or {base_url, api_key_env | api_key_file, api_key_header}
    upstream_timeout_s: float = 60.0  # whole answer; for a stream, the longest wait between two chunks
    upstream_connect_timeout_s: float = 5.0
    upstream_retries: int = 2  # connection failures only: the upstream never saw the request
    # Ask providers for token usage on barp-auto streams (OpenAI's stream_options.include_usage) even
    # when the client did not, and keep it from the client: every streamed answer is then priced (and
    # can be judged). Off by default: a provider that does not know stream_options may refuse it.
    upstream_stream_usage: bool = False
    # Names clients send for a model this service routes (an app that names gpt-4o, a tool that names
    # claude-sonnet-4-5) -> barp-auto or a model with an upstream: a drop-in without editing the client.
    # A name may hold `*` (claude-*: every dated version a tool may send); exact names win, then the
    # first pattern that matches, in the order written.
    model_aliases: dict = field(default_factory=dict)

    def alias_target(self, name: str) -> str | None:
        """What an alias stands for, or None when `name` is no alias."""
        if name in self.model_aliases:
            return self.model_aliases[name]
        return next((t for a, t in self.model_aliases.items() if "*" in a and re.fullmatch(alias_pattern(a), name)), None)
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    # The routers' autoscaling (RouterAPI colocated, RouterModel split) for Python deployments; in YAML, `deployments:` overrides it.
    router_autoscaling: dict = field(
        default_factory=lambda: {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    )
    exploration: ExplorationSettings = field(default_factory=ExplorationSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)

    def validate(self) -> "ServeSettings":
        _pos("weights_poll_s", self.weights_poll_s)
        _pos("max_batch_size", self.max_batch_size)
        if self.batch_wait_timeout_s < 0:
            raise SettingsError(f"batch_wait_timeout_s: must be >= 0, got {self.batch_wait_timeout_s}")
        if self.topology not in TOPOLOGIES:
            raise SettingsError(f"topology: must be one of {list(TOPOLOGIES)}, got {self.topology!r}")
        if isinstance(self.lone_route_threads, bool) or not isinstance(self.lone_route_threads, int) or self.lone_route_threads < 0:
            raise SettingsError(f"lone_route_threads: must be an integer >= 0, got {self.lone_route_threads!r}")
        if isinstance(self.embedding_cache, bool) or not isinstance(self.embedding_cache, int) or self.embedding_cache < 0:
            raise SettingsError(f"embedding_cache: must be an integer >= 0 (prompts kept per router replica; 0: off), "
                                f"got {self.embedding_cache!r}")
        if not isinstance(self.upstreams, dict):
            raise SettingsError("upstreams: must be a mapping of model name to base URL")
        self.upstreams = {name: _upstream(name, raw) for name, raw in self.upstreams.items()}
        for name, up in self.upstreams.items():
            up.validate(name)
        if not isinstance(self.model_aliases, dict):
            raise SettingsError("model_aliases: must be a mapping of a name clients send to barp-auto or a model with an upstream")
        for alias, target in self.model_aliases.items():
            if not isinstance(alias, str) or not alias.strip() or alias == "barp-auto" or alias in self.upstreams:
                raise SettingsError(f"model_aliases: {alias!r} cannot be an alias: it must be a new name, not barp-auto "
                                    "or a model with an upstream")
            if target != "barp-auto" and target not in self.upstreams:
                raise SettingsError(f"model_aliases.{alias}: must be 'barp-auto' or a model with an upstream "
                                    f"({sorted(self.upstreams)}), got {target!r}")
        _pos("upstream_timeout_s", self.upstream_timeout_s)
        _pos("upstream_connect_timeout_s", self.upstream_connect_timeout_s)
        if not isinstance(self.upstream_stream_usage, bool):
            raise SettingsError(f"upstream_stream_usage: must be true or false, got {self.upstream_stream_usage!r}")
        if isinstance(self.upstream_retries, bool) or not isinstance(self.upstream_retries, int) or self.upstream_retries < 0:
            raise SettingsError(f"upstream_retries: must be an integer >= 0, got {self.upstream_retries!r}")
        for section in (self.exploration, self.feedback, self.trainer, self.rollout, self.failover, self.latency, self.retention):
            section.validate()
        refill = self.trainer.window + 4 * self.rollout.eval_window
        if self.trainer.enabled and self.retention.keep_rewards is not None and self.retention.keep_rewards < refill:
            raise SettingsError(f"retention.keep_rewards: must be at least trainer.window + 4 x rollout.eval_window = {refill} "
                                f"(what the trainer reads back after a restart), got {self.retention.keep_rewards}")
        self.judge.validate(self.upstreams)
        self.auth.validate()
        self.limits.validate()
        return self

    def absolute(self) -> "ServeSettings":
        """Replicas may run with another working directory: pin every path now."""
        if not is_uri(self.checkpoint):  # a storage URI (s3://...) is fetched when loaded
            self.checkpoint = str(Path(self.checkpoint).expanduser().resolve())
        self.log_dir = str(Path(self.log_dir).expanduser().resolve())
        if not is_uri(self.trainer.state_dir):  # a URI (s3://, gs://, file://) is already absolute
            self.trainer.state_dir = str(Path(self.trainer.state_dir).expanduser().resolve())
        if self.retention.archive and not is_uri(self.retention.archive):
            self.retention.archive = str(Path(self.retention.archive).expanduser().resolve())
        if self.feedback.database_url_file:
            self.feedback.database_url_file = str(Path(self.feedback.database_url_file).expanduser().resolve())
        if self.auth.token_file:
            self.auth.token_file = str(Path(self.auth.token_file).expanduser().resolve())
        if self.auth.admin_token_file:
            self.auth.admin_token_file = str(Path(self.auth.admin_token_file).expanduser().resolve())
        if self.auth.clients_file:
            self.auth.clients_file = str(Path(self.auth.clients_file).expanduser().resolve())
        for up in self.upstreams.values():
            if up.api_key_file:
                up.api_key_file = str(Path(up.api_key_file).expanduser().resolve())
        return self


def settings_from_args(args: dict[str, Any] | None) -> ServeSettings:
    args = dict(args or {})
    _check_keys("args", args, ServeSettings)
    nested = {}
    sections = (("exploration", ExplorationSettings), ("feedback", FeedbackSettings), ("trainer", TrainerSettings),
                ("rollout", RolloutSettings), ("auth", AuthSettings), ("limits", LimitSettings),
                ("failover", FailoverSettings), ("latency", LatencySettings), ("judge", JudgeSettings),
                ("retention", RetentionSettings))
    for name, cls in sections:
        raw = args.pop(name, None) or {}
        if not isinstance(raw, dict):
            raise SettingsError(f"{name}: must be a mapping")
        _check_keys(name, raw, cls)
        nested[name] = cls(**raw)
    try:
        s = ServeSettings(**args, **nested)
    except TypeError as e:
        raise SettingsError(str(e)) from None
    return s.validate()


def settings_from_config(config: str, overrides: list[str]) -> ServeSettings:
    """The app's settings from a serve config file (its first application's `args`), with
    `section.field=value` overrides, for the command-line tools that read the service's store."""
    import yaml

    try:
        args = yaml.safe_load(Path(config).read_text())["applications"][0]["args"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as e:
        raise SettingsError(f"--config: cannot read a serve config's application args from {config!r} ({type(e).__name__})") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(f"--set: expected section.field=value, got {item!r}")
        section, _, name = key.partition(".")
        if name:
            args.setdefault(section, {})[name] = yaml.safe_load(value)
        else:
            args[section] = yaml.safe_load(value)
    return settings_from_args(args).absolute()


def _check_keys(where: str, raw: dict, cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")


def _pos(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise SettingsError(f"{name}: must be a number > 0, got {v!r}")


PRICE_FIELDS = ("input_per_mtok", "output_per_mtok")


PRICE_READING_HEADS = (*PRICE_HEADS, "model_conditioned")


def checkpoint_policy(meta: dict) -> dict:
    """The `policy` section of the config the checkpoint was trained with."""
    return (meta.get("config") or {}).get("policy") or {}


def checkpoint_head(meta: dict) -> str:
    return checkpoint_policy(meta).get("head", "concat")


@dataclass(frozen=True)
class Offer:
    """What routing chooses among now: model names in order, and each one's $/Mtok ({} if unknown)."""

    models: tuple[str, ...]
    prices: dict[str, dict[str, float]]
    sizes: dict[str, float]
    # How the decision reads each prompt (`policy.decision_shrinkage`, its gate): the checkpoint's unless set live.
    decision_shrinkage: tuple[float, str] = (1.0, "none")
    # How many times its training price the decision charges each model (`policy.decision_cost_multiplier`).
    decision_cost_multiplier: float = 1.0
    # The spend target for routes that leave the preference to the service (None: they get the default).
    budget: Budget | None = None
    # A named client's own spend target for its routes that leave the preference to the service.
    client_budgets: dict = field(default_factory=dict)
    # Each model's context window in tokens, where the operator gave one: a request that needs more is not sent there.
    context_windows: dict = field(default_factory=dict)
    # What each model takes beyond text, where the operator said (`CAPABILITIES`): a request needing more is not sent there.
    capabilities: dict = field(default_factory=dict)

    def cards(self) -> list:
        from barp_ray.model_cards import cards_for

        return cards_for(self.models, self.prices, self.sizes, where="models")

    def blended(self) -> list[float] | None:
        """input + output $/Mtok per offered model, None unless every model has a price."""
        if not all(self.prices.get(m) for m in self.models):
            return None
        return [c.blended_price for c in self.cards()]

    def apply(self, module) -> None:
        """Put this offer into a BaRP module, as router replicas and the trainer both must: a
        model-conditioned head takes the cards (any set), a price-aware one today's prices; the
        other heads route their trained models as they are."""
        if module.head == "model_conditioned":
            module.offer(self.cards())
        elif module.head in PRICE_HEADS and self.blended():
            module.set_prices(self.blended())
        module.set_decision_shrinkage(*self.decision_shrinkage)
        module.set_decision_cost_multiplier(self.decision_cost_multiplier)


def live_offer(user_config: Any, meta: dict) -> Offer:
    """The offered models and prices from the live serving config (Serve `user_config`).

    `models` (a mapping of name to {input_per_mtok, output_per_mtok[, size_b]}) replaces the
    checkpoint's model set: only a model-conditioned checkpoint can score a set other than the one
    it trained on. Without it the checkpoint's models are offered, with `prices` on top."""
    from barp_ray.model_cards import CardError, parse_cards

    config = user_config or {}
    if not isinstance(config, dict):
        raise SettingsError(f"user_config: must be a mapping with optional {list(LIVE_KEYS)}")
    unknown = sorted(set(config) - set(LIVE_KEYS))
    if unknown:
        raise SettingsError(f"user_config: unknown key(s) {unknown}; known: {list(LIVE_KEYS)}")
    shrinkage, charge = live_decision_shrinkage(config, meta), live_decision_cost_multiplier(config, meta)
    if config.get("models") is None:
        prices = live_prices(config.get("prices"), meta)
        return Offer(tuple(meta["models"]), {m: p for m, p in prices.items() if p}, dict(meta.get("sizes") or {}), shrinkage, charge,
                     live_budget(config, meta, prices), live_client_budgets(config, meta, prices),
                     live_context_windows(config, meta["models"]), live_capabilities(config, meta["models"]))
    if config.get("prices"):
        raise SettingsError("prices: give each model's price inside `models` when `models` is set, not both")
    head = checkpoint_head(meta)
    if head != "model_conditioned":
        raise SettingsError(f"models: this checkpoint's policy head {head!r} routes exactly the models it trained on "
                            f"{list(meta['models'])}; train with policy.head: model_conditioned to add or remove models")
    try:
        cards = parse_cards(config["models"], "models")
    except CardError as e:
        raise SettingsError(str(e)) from None
    prices = {c.name: {"input_per_mtok": float(c.input_per_mtok), "output_per_mtok": float(c.output_per_mtok)} for c in cards}
    return Offer(tuple(c.name for c in cards), prices, {c.name: float(c.size_b) for c in cards if c.size_b}, shrinkage, charge,
                 live_budget(config, meta, prices), live_client_budgets(config, meta, prices),
                 live_context_windows(config, [c.name for c in cards]), live_capabilities(config, [c.name for c in cards]))


def _per_model(config: dict, key: str, models, values: str) -> dict:
    """A live `{<model>: value}` map: {} when unset; refused unless a mapping over offered models."""
    raw = config.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{key}: must map model names to {values}, got {raw!r}")
    unknown = sorted(set(map(str, raw)) - set(models))
    if unknown:
        raise SettingsError(f"{key}: unknown model(s) {unknown}; offered: {list(models)}")
    return raw


def live_context_windows(config: dict, models) -> dict[str, int]:
    """`context_windows: {<model>: tokens}` set live: the most tokens (prompt and answer) each model
    takes at its provider. A model left out has no known limit. Set live like prices, since models
    and providers change while serving."""
    raw = _per_model(config, "context_windows", models, "token counts")
    for name, tokens in raw.items():
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise SettingsError(f"context_windows.{name}: must be a positive whole number of tokens, got {tokens!r}")
    return {str(name): int(tokens) for name, tokens in raw.items()}


def live_capabilities(config: dict, models) -> dict[str, tuple[str, ...]]:
    """`capabilities: {<model>: [vision, tools, ...]}` set live: what each model's provider takes beyond
    text (`CAPABILITIES`). A model listed has exactly those; a model left out is not known, and kept
    for any request. Set live like context windows, since providers add features while serving."""
    raw = _per_model(config, "capabilities", models, f"lists of {list(CAPABILITIES)}")
    for name, features in raw.items():
        if not isinstance(features, list) or not all(isinstance(f, str) and f in CAPABILITIES for f in features):
            raise SettingsError(f"capabilities.{name}: must be a list of {list(CAPABILITIES)} (may be empty), got {features!r}")
    return {str(name): tuple(sorted(set(features))) for name, features in raw.items()}


def live_decision_shrinkage(config: dict, meta: dict) -> tuple[float, str]:
    """`decision_shrinkage` (and `decision_shrinkage_gate`) set live: how much of each prompt's own
    deviation from the average training prompt the decision keeps. Training does not depend on it,
    so it is a serving setting like a price: e.g. lowered while traffic from tasks the policy never
    saw comes in. Unset, the checkpoint's own (as for prices, a removed key reverts to it)."""
    keep, gate = config.get("decision_shrinkage"), config.get("decision_shrinkage_gate")
    if keep is None:
        if gate is not None:
            raise SettingsError("decision_shrinkage_gate: gates a shrinkage; set decision_shrinkage too")
        policy = checkpoint_policy(meta)
        return float(policy.get("decision_shrinkage", 1.0)), str(policy.get("decision_shrinkage_gate", "none"))
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 <= keep <= 1.0:
        raise SettingsError(f"decision_shrinkage: must be a number in [0, 1] (1: off), got {keep!r}")
    if gate is not None and gate not in SHRINKAGE_GATES:
        raise SettingsError(f"decision_shrinkage_gate: must be 'none' or 'cost', got {gate!r}")
    if keep < 1.0 and checkpoint_head(meta) == "model_conditioned":
        raise SettingsError("decision_shrinkage: a model_conditioned checkpoint scores model cards; it applies to the other heads")
    return float(keep), gate or "none"


@dataclass(frozen=True)
class Budget:
    """A spend target for the routes that send no preference: each router replica picks the largest
    quality weight whose estimated spend on its own recent such routes fits (`serve/pacing.py`)."""

    dollars_per_1k: float  # estimated dollars per 1,000 paced routes
    output_tokens: int  # the answer length the estimate assumes (input tokens are counted)
    window: int = 512  # the recent paced routes the weight is chosen on
    every: int = 128  # paced routes between two choices (a scan of 512 routes: ~70 ms of one core here)
    # bill: a model with enough recent feedback is priced at its mean billed cost (the trainer's), the
    # others by the estimate; estimate: always input tokens x price + output_tokens x price
    price_by: str = "bill"


BUDGET_FIELDS = ("dollars_per_1k", "output_tokens", "window", "every", "price_by")


def live_client_budgets(config: dict, meta: dict, prices: dict) -> dict[str, Budget]:
    """`client_budgets: {<client>: {dollars_per_1k, ...}}` set live: each named client's (auth.clients_file)
    own budget for its routes that send no preference, as `budget` is for everyone else's."""
    raw = config.get("client_budgets")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"client_budgets: must map client names to budgets, got {raw!r}")
    out = {}
    for name, budget in raw.items():
        try:
            out[str(name)] = live_budget({"budget": budget}, meta, prices)
        except SettingsError as e:
            raise SettingsError(str(e).replace("budget", f"client_budgets.{name}", 1)) from None
        if out[str(name)] is None:
            raise SettingsError(f"client_budgets.{name}: must be a mapping with dollars_per_1k")
    return out


def live_budget(config: dict, meta: dict, prices: dict) -> Budget | None:
    """`budget` set live: {dollars_per_1k, output_tokens?, window?, every?}. The estimate prices every
    offered model, so each needs a price; `output_tokens` defaults to the checkpoint's answer length."""
    raw = config.get("budget")
    if raw is None:
        return None
    if not isinstance(raw, dict) or "dollars_per_1k" not in raw:
        raise SettingsError(f"budget: must be a mapping with dollars_per_1k (and optional output_tokens, window, every), got {raw!r}")
    unknown = sorted(set(raw) - set(BUDGET_FIELDS))
    if unknown:
        raise SettingsError(f"budget: unknown key(s) {unknown}; known: {list(BUDGET_FIELDS)}")
    dollars = raw["dollars_per_1k"]
    if isinstance(dollars, bool) or not isinstance(dollars, (int, float)) or not math.isfinite(dollars) or dollars <= 0:
        raise SettingsError(f"budget.dollars_per_1k: must be a positive number of dollars per 1,000 routes, got {dollars!r}")
    out = raw.get("output_tokens", stated_answer_tokens(meta))
    if out is None:
        raise SettingsError("budget.output_tokens: required, since the checkpoint's answer length is not one number")
    budget = Budget(float(dollars), out, **{k: raw[k] for k in ("window", "every", "price_by") if k in raw})
    for name, low in (("output_tokens", 0), ("window", 1), ("every", 1)):
        value = getattr(budget, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SettingsError(f"budget.{name}: must be an integer >= {low}, got {value!r}")
    if budget.price_by not in ("bill", "estimate"):
        raise SettingsError(f"budget.price_by: must be 'bill' or 'estimate', got {budget.price_by!r}")
    unpriced = sorted(m for m, p in prices.items() if not p)
    if unpriced:
        raise SettingsError(f"budget: needs a price for every offered model; none for {unpriced}")
    return budget


def live_decision_cost_multiplier(config: dict, meta: dict) -> float:
    """`decision_cost_multiplier` set live: how many times its training price the decision charges each
    model (price heads). Like the shrinkage, a serving setting that training does not read: e.g. raised
    while traffic from tasks the policy never saw comes in. Unset, the checkpoint's own."""
    m = config.get("decision_cost_multiplier")
    if m is None:
        return float(checkpoint_policy(meta).get("decision_cost_multiplier", 1.0))
    if why := cost_multiplier_problem(m, checkpoint_head(meta)):
        raise SettingsError(f"decision_cost_multiplier: {why}")
    return float(m)


def live_prices(overrides: Any, meta: dict) -> dict[str, dict[str, float]]:
    """Today's prices per model: the checkpoint's, with the serving config's `prices` on top.

    They reach replicas as Serve `user_config` (`reconfigure`), so a price set there changes
    routing with no training step; a price edited in the app's `args` re-deploys the replicas one by
    one instead (Serve restarts them when `args` change). Only a checkpoint whose
    policy reads prices (`policy.head: price_aware`, `cost_aware`) can take them: for any other, routing would
    silently ignore the change."""
    from barp_ray.model_cards import CardError, ModelCard, check_cards

    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise SettingsError("prices: must be a mapping of model name to {input_per_mtok, output_per_mtok}")
    head = checkpoint_head(meta)
    if overrides and head not in PRICE_READING_HEADS:
        raise SettingsError(f"prices: this checkpoint's policy head {head!r} does not read prices; "
                            "train it with policy.head: price_aware, cost_aware or model_conditioned")
    models = list(meta["models"])
    out = {m: dict((meta.get("prices") or {}).get(m) or {}) for m in models}
    for name, raw in overrides.items():
        if name not in out:
            raise SettingsError(f"prices.{name}: not a model of this checkpoint; known: {models}")
        if not isinstance(raw, dict) or set(raw) != set(PRICE_FIELDS):
            raise SettingsError(f"prices.{name}: must be {{input_per_mtok, output_per_mtok}} in $ per million tokens, got {raw!r}")
        try:  # the same checks as a model card's (`models:`), named under `prices`
            check_cards([ModelCard(name, raw["input_per_mtok"], raw["output_per_mtok"])], "prices")
        except CardError as e:
            raise SettingsError(str(e)) from None
        out[name] = {f: float(raw[f]) for f in PRICE_FIELDS}
    return out
