"""Routing metrics, exported by Ray's metrics agent in Prometheus format (names get Ray's `ray_` prefix).

Why these: Serve's own metrics say how many requests came and how fast; an operator of a router
also needs which models it picks and how often it explores, whether feedback arrives (and how
late), which policy version each replica serves, what reward the service earns, and whether the
trainer's candidates are being published or refused. Each deployment records what only it knows;
`ray.serve.metrics` adds the deployment, replica and application tags.
"""
from __future__ import annotations

from collections import deque

from ray.serve import metrics

DELAY_BOUNDARIES = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
LATENCY_BOUNDARIES = [0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]


class RouteMetrics:
    """Ingress: one count per answered route."""

    def __init__(self) -> None:
        self.routes = metrics.Counter("barp_routes_total", description="routes answered, by chosen model and mode",
                                      tag_keys=("model", "mode"))
        self.explored = metrics.Counter(
            "barp_routes_explored_total",
            description="routes whose model is not the policy's first choice (exploration); share = this / barp_routes_total",
            tag_keys=("model",))

        self.client_routes = metrics.Counter(
            "barp_client_routes_total", description="routes answered for each named client (auth.clients_file), by chosen model",
            tag_keys=("client", "model"))
        self.upstream_failures = metrics.Counter(
            "barp_upstream_failures_total", description="chat requests a model's provider failed, by model and the status given for it",
            tag_keys=("model", "status"))
        self.failovers = metrics.Counter(
            "barp_chat_failovers_total", description="barp-auto chat requests routed again after this model's provider failed",
            tag_keys=("model",))
        self.judge = metrics.Counter(
            "barp_judge_total", description="chat answers handed to the LLM judge, by outcome (scored, client_first, "
            "refused, unparsed, judge_failed, busy)", tag_keys=("outcome",))
        self.latency = metrics.Histogram(
            "barp_upstream_latency_seconds", description="chat answers' wait by model: to a stream's first chunk (first_token) "
            "and to the whole answer (answer)", boundaries=LATENCY_BOUNDARIES, tag_keys=("model", "kind"))
        self.limits_unmet = metrics.Counter(
            "barp_route_limits_unmet_total", description="routes whose own limit (max_cost, max_latency_s) no candidate met, "
            "so the cheapest or fastest answered, or too long for every candidate's context window, so the largest "
            "answered: limit = cost | latency | context", tag_keys=("limit",))
        self.left_out = metrics.Gauge(
            "barp_upstream_left_out", description="1 while this ingress replica leaves the model out of barp-auto (its breaker "
            "is open, or its provider asked to wait after a 429)", tag_keys=("model",))
        self.requests_in_flight = metrics.Gauge(
            "barp_upstream_in_flight", description="chat requests this ingress replica has in flight to the model's provider "
            "(capped by upstreams.<model>.max_concurrent)", tag_keys=("model",))

    def route(self, model: str, mode: str, probabilities: dict[str, float], client: str | None = None) -> None:
        self.routes.inc(1, tags={"model": model, "mode": mode})
        if client is not None:
            self.client_routes.inc(1, tags={"client": client, "model": model})
        if model != max(probabilities, key=probabilities.get):
            self.explored.inc(1, tags={"model": model})

    def limit_unmet(self, limit: str) -> None:
        self.limits_unmet.inc(1, tags={"limit": limit})

    def timed(self, model: str, kind: str, seconds: float) -> None:
        self.latency.observe(seconds, tags={"model": model, "kind": kind})

    def judged(self, outcome: str) -> None:
        self.judge.inc(1, tags={"outcome": outcome})

    def upstream_failed(self, model: str, status: int) -> None:
        self.upstream_failures.inc(1, tags={"model": model, "status": str(status)})

    def failed_over(self, model: str) -> None:
        self.failovers.inc(1, tags={"model": model})

    def breaker(self, model: str, left_out: bool) -> None:
        self.left_out.set(1.0 if left_out else 0.0, tags={"model": model})

    def in_flight(self, model: str, n: int) -> None:
        self.requests_in_flight.set(float(n), tags={"model": model})


class FeedbackMetrics:
    """The feedback store's one writer: every feedback passes here, accepted or not."""

    def __init__(self, window: int = 1000) -> None:
        self.feedback = metrics.Counter("barp_feedback_total", description="feedback posts by outcome",
                                        tag_keys=("outcome",))
        self.delay = metrics.Histogram("barp_feedback_delay_seconds", description="from the route to its accepted feedback",
                                       boundaries=DELAY_BOUNDARIES)
        self.reward = metrics.Gauge("barp_reward_recent_mean", description=f"mean reward of the last {window} accepted feedbacks")
        self.score = metrics.Gauge("barp_score_recent_mean", description=f"mean task score of the last {window} accepted feedbacks")
        self.cost = metrics.Gauge("barp_cost_recent_mean_dollars", description=f"mean cost of the last {window} accepted feedbacks")
        self.client_spend = metrics.Counter(
            "barp_client_spend_dollars_total", description="dollars of accepted feedback's answers, per named client",
            tag_keys=("client",))
        self.retention_failures = metrics.Counter(
            "barp_feedback_retention_failures_total", description="retention passes that failed (nothing left the database; "
            "the next pass tries again): an unreachable archive, a database error")
        self.pruned_total = metrics.Counter(
            "barp_feedback_pruned_total", description="joined rewards retention took out of the database, archived or deleted",
            tag_keys=("archived",))
        self._window = window
        self._recent: deque[tuple[float, float, float]] = deque()
        self._sums = [0.0, 0.0, 0.0]  # running sums over _recent: O(1) per feedback

    def retention_failed(self) -> None:
        self.retention_failures.inc(1)

    def pruned(self, n: int, archived: bool) -> None:
        if n:
            self.pruned_total.inc(n, tags={"archived": str(archived).lower()})

    def accepted(self, record: dict, now: float) -> None:
        self.feedback.inc(1, tags={"outcome": "accepted"})
        if record.get("client") is not None and float(record["cost"]) > 0:
            self.client_spend.inc(float(record["cost"]), tags={"client": record["client"]})
        self.delay.observe(max(0.0, now - float(record.get("time", now))))  # a replayed write's record has no time
        new = (float(record["reward"]), float(record["score"]), float(record["cost"]))
        self._recent.append(new)
        old = self._recent.popleft() if len(self._recent) > self._window else (0.0, 0.0, 0.0)
        n = len(self._recent)
        for i, gauge in enumerate((self.reward, self.score, self.cost)):
            self._sums[i] += new[i] - old[i]
            gauge.set(self._sums[i] / n)

    def rejected(self, reason: str) -> None:
        self.feedback.inc(1, tags={"outcome": reason})


class ReplicaMetrics:
    """Router replica: the policy version it serves now, and where a live budget has put its paced weight."""

    def __init__(self) -> None:
        self.version = metrics.Gauge("barp_policy_version", description="policy version this router replica serves")
        self.paced_weight = metrics.Gauge("barp_budget_quality_weight",
                                          description="w_q given to routes without a preference, chosen to fit the live budget "
                                                      "(client: a named client's own budget; empty: the live budget)",
                                          tag_keys=("client",))
        self.encodings = metrics.Counter("barp_embedding_cache_total",
                                         description="prompts a router replica routed, by whether their encoding was kept "
                                                     "from an earlier one (hit) or computed (miss): embedding_cache",
                                         tag_keys=("outcome",))
        self.paced_spend = metrics.Gauge("barp_budget_estimated_spend_dollars",
                                         description="estimated dollars per 1,000 paced routes at that weight, on the replica's recent ones (bills where known)",
                                         tag_keys=("client",))

    def encoded(self, hits: int, misses: int) -> None:
        if hits:
            self.encodings.inc(hits, tags={"outcome": "hit"})
        if misses:
            self.encodings.inc(misses, tags={"outcome": "miss"})

    def serving(self, version: int) -> None:
        self.version.set(version)

    def pacing(self, w_q: float, estimate: float | None, client: str = "") -> None:
        """`client`: a named client's own budget ("" for the live budget everyone else's routes follow)."""
        self.paced_weight.set(w_q, tags={"client": client})
        if estimate is not None:
            self.paced_spend.set(estimate, tags={"client": client})


class TrainerMetrics:
    def __init__(self) -> None:
        self.updates = metrics.Counter("barp_trainer_updates_total", description="continuous-training updates, "
                                       "by whether the safe-rollout gate published the candidate", tag_keys=("published",))
        self.version = metrics.Gauge("barp_trainer_published_version", description="newest published policy version")
        self.forgets = metrics.Counter("barp_trainer_replay_forgets_total",
                                       description="times a fall in the answers' score made the replay forget the records before it")
        self.failures = metrics.Counter("barp_trainer_update_failures_total",
                                        description="continuous-training updates that raised (the loop goes on; /v1/stats "
                                                    "trainer.failing says what and since when)")

    def update(self, row: dict, published_version: int) -> None:
        self.updates.inc(1, tags={"published": str(bool(row["published"])).lower()})
        if row.get("forgot"):
            self.forgets.inc(1)
        self.version.set(published_version)
