"""Continuous training from served feedback, on the same RLlib Learner as offline training.

Each update: read the joined rewards that arrived since `offset` from the feedback store; a
deterministic `rollout.holdout_fraction` of them (by request id) is held back for evaluation,
the rest joins a replay window of the newest `trainer.window` rewards; then the LearnerGroup
(`BaRPTorchLearner`, so `num_learners` / `num_gpus_per_learner` apply) takes minibatch steps
on the window, `replay_ratio` trained samples per new reward, with the offline loss: REINFORCE + entropy with
a per-model critic (doubly robust) and importance weights pi/mu clipped at
`importance_weight_clip`, mu being the exact served propensity. Replaying each reward in several
steps is what makes a few thousand rewards enough; the bounded window is what lets the policy
forget a world that has changed.

Opt-in (`trainer.anchor_weight`), a fading pull toward the checkpoint, dropped on evidence, holds
routing near it while rewards are few (`serve/checkpoint_anchor.py`).

Safe rollout (`serve/rollout_gate.py`): a candidate is published only if its off-policy estimate on
held-back rewards is not clearly worse than the serving weights' and the latest published versions'.

A fall in the answers' score (`serve/reward_drift.py`) makes the replay forget the records before
it, and routes then explore more for a while (`exploration_epsilon`, polled by the replicas with
the weights): the learner stops averaging two worlds and finds the new best models sooner.

After every update the learner state, offset and version are saved
together, atomically; published weights are saved on their own, so a router replica that starts
while the trainer is down still serves the newest published version.
"""
from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barp_ray.policy import RoutingPolicy, load_policy_state, policy_state
from serve.checkpoint_anchor import CheckpointAnchor
from serve.feedback_store import RewardReader
from serve.logged_rounds import head_log_prices, held_back, logged_row, observations, offered_rows
from serve.reward_drift import drop_cut
from serve.rollout_gate import HeldBack, RolloutGate
from serve.state_store import StateStore
from serve.upstream_latency import UpstreamLatency

REPORTED = "reported"  # the latencies clients post with feedback (UpstreamLatency's kind for them)

logger = logging.getLogger(__name__)

STATE = "state"
PUBLISHED = "published"
PROGRESS = "progress.json"
READ_LIMIT = 8192
BILL_WINDOW, BILL_MIN = 256, 20  # per model: the newest bills kept, and the fewest a mean is given from


def mean_bills(bills: dict[str, deque]) -> dict[str, float]:
    """Mean billed dollars per route of each model with at least BILL_MIN of its newest bills."""
    return {m: float(np.mean(d)) for m, d in bills.items() if len(d) >= BILL_MIN}


def latest_published(state_dir: str) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The last published (version, inference weights), read from the state store."""
    with tempfile.TemporaryDirectory(prefix="barp-published-") as tmp:
        try:
            if not StateStore(state_dir).load(PUBLISHED, Path(tmp) / "p"):
                return None
            version = int(json.loads((Path(tmp) / "p" / "version.json").read_text())["version"])
            return version, torch.load(Path(tmp) / "p" / "module.pt", weights_only=True)
        except (OSError, ValueError, KeyError, RuntimeError):
            return None


def _numpy(weights: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in weights.items()}


class CheckpointNotFound(ValueError):
    """`load_checkpoint` was given a path with nothing there (404, not 422: nothing to judge)."""


class GateRefused(ValueError):
    """A gated or dry-run `load_checkpoint` that the held-back evidence cannot support (409): too
    few held-back rewards to judge, or (gated) a checkpoint estimated worse than the weights served."""

    def __init__(self, message: str, estimate: dict | None = None):
        super().__init__(message)
        self.estimate = estimate


class ContinuousTrainer:
    def __init__(self, settings, reader=None, commit_offsets: bool = True) -> None:
        """`settings` is the whole ServeSettings: checkpoint, feedback store, trainer, rollout and
        exploration all matter here. `reader`: where the rewards come from (the store's by default;
        `barp replay --archive` reads its archive first). `commit_offsets`: keep the saved read
        position in the store for retention, when it is on (off for tools that only read the store)."""
        from serve.feedback_db import open_database

        checkpoint = settings.checkpoint
        self.settings = settings
        self.t, self.rollout = settings.trainer, settings.rollout
        self.gate = RolloutGate(settings.rollout, settings.exploration)
        self.state = StateStore(self.t.state_dir)  # a path or a pyarrow.fs URI (s3://...)
        self.reader = reader if reader is not None else RewardReader(open_database(settings))
        self.commit_offsets = commit_offsets and settings.retention.enabled  # only retention reads it
        policy = RoutingPolicy.load(checkpoint)
        self.models = policy.models
        self.index = {m: i for i, m in enumerate(self.models)}
        self.serving = policy.module  # the weights replicas serve now (inference copy)
        self.reading = policy.reading  # the logged contexts were made this way; a new checkpoint must read alike
        self.learner_group, self.scratch = self._build(policy.module)  # scratch: the gate's copy of the learner's module
        self.anchor = self._anchor_on_checkpoint()
        self.offset = 0
        self.version = 0
        self.published_version = 0
        self.refused: dict[str, Any] | None = None
        self.drift: dict[str, Any] | None = None  # the last time a fall in score made the replay forget
        self.boost_left = 0  # new rewards still to come before routes explore at the usual epsilon again
        self.rewards_since_change = 0  # trained since the start, a forget or a new model set (trainer.replay_decay)
        self.last_estimate: dict[str, Any] | None = None
        self.updates: list[dict] = []
        self.published: deque[dict] = deque(maxlen=64)  # recent publications, for delay reports
        self.window: deque[dict] = deque(maxlen=self.t.window)
        self.eval_window: deque[dict] = deque(maxlen=self.rollout.eval_window)
        self.bills: dict[str, deque[float]] = {}  # each model's newest billed costs, for a live budget's pacing
        lat = settings.latency  # each model's newest reported latencies, for routes' latency limit
        self.latencies = UpstreamLatency(lat.window, lat.quantile, lat.min_samples)
        self._resume()
        if self.anchor.active:
            self._learner_weights()  # scratch holds the learner as it is before each update: the anchor's gate reads its critic
        self.snapshot = (self.published_version, _numpy(policy_state(self.serving)))
        # (version, inference module) of the latest publications, newest last; the gate's yardsticks.
        self.references: deque[tuple[int, Any]] = deque([(self.published_version, copy.deepcopy(self.serving))],
                                                        maxlen=self.rollout.references)

    def _build(self, module):
        from ray.rllib.core.rl_module.rl_module import RLModuleSpec

        from barp_ray.rl_module import BaRPRLModule
        from barp_ray.training.algorithm import BaRPConfig

        t = self.t
        config = (
            BaRPConfig()
            .environment(observation_space=module.observation_space, action_space=module.action_space)
            .learners(num_learners=t.num_learners, num_gpus_per_learner=t.num_gpus_per_learner)
            .training(lr=t.lr, entropy_coeff=t.entropy_coeff, baseline="critic", baseline_coeff=t.baseline_coeff,
                      importance_weight_clip=t.importance_weight_clip, critic_kl_coeff=t.critic_kl_coeff,
                      critic_temperature=t.critic_temperature, normalize_advantages=True)
            .rl_module(rl_module_spec=RLModuleSpec(module_class=BaRPRLModule,
                                                   model_config={**module.model_config, "critic": True}))
        )
        group = config.build_learner_group()
        self._adopt(group, policy_state(module))
        scratch = config.get_rl_module_spec().build()
        scratch.eval()  # the gate's copy: no model-id dropout when it scores held-back records
        return group, scratch

    def _anchor_on_checkpoint(self) -> CheckpointAnchor:
        """The anchor, holding a frozen copy of the learner as the checkpoint started it (with the
        anchor off, none: no copy and no weights fetched at start-up)."""
        module = None
        if self.t.anchor_weight > 0:
            self._learner_weights()  # the checkpoint's policy (and a fresh critic) in scratch
            module = copy.deepcopy(self.scratch)
        return CheckpointAnchor(module, self.t.anchor_weight, self.t.anchor_fade, self.t.anchor_gate_z,
                                self.t.anchor_gate_min)

    @staticmethod
    def _adopt(group, weights: dict) -> None:
        """Load policy weights into the learner; the critic (training-only, shaped per model) keeps its own."""
        from ray.rllib.core import DEFAULT_MODULE_ID

        current = group.get_weights()[DEFAULT_MODULE_ID]
        # np.shape: a 0-d parameter (the price_aware head's price_scale) comes back from the learner as a float
        merged = {k: (torch.as_tensor(weights[k]) if k in weights and tuple(np.shape(weights[k])) == tuple(np.shape(v)) else v)
                  for k, v in current.items()}
        group.set_weights({DEFAULT_MODULE_ID: merged})

    def _learner_weights(self) -> dict[str, torch.Tensor]:
        """The learner's whole module (policy + critic), loaded into `scratch` for the gate."""
        from ray.rllib.core import DEFAULT_MODULE_ID

        w = self.learner_group.get_weights()[DEFAULT_MODULE_ID]
        weights = {k: torch.tensor(np.array(v)) for k, v in w.items()}
        self.scratch.load_state_dict(weights)
        return weights

    # -- persistence -------------------------------------------------------------------------
    def _resume(self) -> None:
        with tempfile.TemporaryDirectory(prefix="barp-resume-") as tmp:
            local = Path(tmp) / STATE
            if self.state.load(STATE, local) and (local / PROGRESS).is_file():
                p = json.loads((local / PROGRESS).read_text())
                self.learner_group.restore_from_path(str(local / "learner_group"))
                self.offset, self.version = int(p["offset"]), int(p["version"])
                self.refused = p.get("refused")
                self.drift = p.get("drift")
                self.boost_left = int(p.get("boost_left", 0))
                # states saved before the rename (stop 34) call this count "settled"
                self.rewards_since_change = int(p.get("rewards_since_change", p.get("settled", 0)))
                self.anchor.restore(p.get("anchor"))
        published = latest_published(self.t.state_dir)
        if published is not None:
            self.published_version = published[0]
            load_policy_state(self.serving, published[1])
        # A crash between publishing a version and saving the state behind it leaves the state one
        # version older; numbering on from it would give new weights a number replicas already
        # serve (and so never load). Versions only go up.
        self.version = max(self.version, self.published_version)
        # Refill the replay and evaluation windows from the store, up to the saved offset.
        for r in self.reader.up_to(self.offset, self.t.window + self.rollout.eval_window * 4):
            self._file(r)
        if self.drift:  # what the replay forgot stays forgotten
            self.window = deque((r for r in self.window if r["id"] > self.drift["through_id"]), maxlen=self.t.window)

    def _save(self) -> None:
        """Learner state, offset and version as one version of the state: all of it or none."""
        def write(tmp: Path) -> None:
            self.learner_group.save_to_path(str(tmp / "learner_group"))
            (tmp / PROGRESS).write_text(json.dumps({"offset": self.offset, "version": self.version,
                                                    "refused": self.refused, "drift": self.drift,
                                                    "boost_left": self.boost_left,
                                                    "rewards_since_change": self.rewards_since_change,
                                                    "anchor": self.anchor.state(), "time": time.time()}))

        self.state.save(STATE, self.version, write)

    def _publish(self, weights: dict[str, torch.Tensor], info: dict) -> None:
        def write(tmp: Path) -> None:
            torch.save(weights, tmp / "module.pt")
            (tmp / "version.json").write_text(json.dumps({"version": self.version, **info}))

        self.state.save(PUBLISHED, self.version, write)
        load_policy_state(self.serving, weights)
        # One tuple, swapped in whole: a replica polling from another thread never sees a version
        # number with half-loaded weights.
        self.snapshot = (self.version, _numpy(weights))
        self.published_version = self.version
        self.references.append((self.version, copy.deepcopy(self.serving)))
        self.published.append({"version": self.version, "published_at": time.time(), **info})

    # -- the offered models ------------------------------------------------------------------
    def offer(self, offer) -> None:
        """The serving config's offer changed (Serve `user_config`): learn and judge over it from
        now on. A model-conditioned policy takes any set; a price-aware one takes today's prices
        into its logits, as the replicas do. Rewards for a model no longer offered stay in the
        windows but are not trained on while it is away."""
        from ray.rllib.core import DEFAULT_MODULE_ID

        anchored = [] if self.anchor.module is None else [self.anchor.module]
        for module in (self.serving, self.scratch, *anchored, *(m for _, m in self.references)):
            offer.apply(module)
        self.learner_group.foreach_learner(lambda learner: offer.apply(learner.module[DEFAULT_MODULE_ID].unwrapped()))
        if tuple(offer.models) != self.models:
            self.rewards_since_change = 0  # a new model set is a changed world: learn fast again (trainer.replay_decay)
            self._end_anchor("new model set")
        self.models = tuple(offer.models)
        self.index = {m: i for i, m in enumerate(self.models)}

    def _offered(self, rows: list[dict]) -> list[dict]:
        return offered_rows(rows, self.models, head_log_prices(self.serving))

    @staticmethod
    def _obs_tensors(rows: list[dict]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in observations(rows).items()}

    # -- training ----------------------------------------------------------------------------
    def _file(self, record: dict) -> bool:
        """Into the replay or the held-back window; True if it will be trained on now."""
        row = logged_row(record)
        if held_back(record["request_id"], self.rollout.holdout_fraction):
            self.eval_window.append(row)
            return False
        self.window.append(row)
        return record["model"] in self.index

    def _ready(self, fresh: list[dict]) -> bool:
        if not fresh:
            return False
        return len(fresh) >= self.t.min_batch or time.time() - fresh[0]["feedback_time"] >= self.t.max_wait_s

    def train_once(self, limit: int = READ_LIMIT) -> dict[str, Any] | None:
        """One update if enough new feedback arrived (at most `limit` rewards of it); None otherwise."""
        fresh = self.reader.after(self.offset, limit)
        if not self._ready(fresh):
            return None
        trainable = sum(self._file(r) for r in fresh)
        for r in fresh:
            if not r["defaulted"] and r.get("cost") is not None:
                self.bills.setdefault(r["model"], deque(maxlen=BILL_WINDOW)).append(float(r["cost"]))
            if r.get("latency_s") is not None:
                self.latencies.observe(r["model"], REPORTED, r["latency_s"])
        self.boost_left = max(0, self.boost_left - len(fresh))
        forgot = self._forget_a_changed_world()
        stats: dict[str, float] = {}
        steps = self.steps_for(trainable) if trainable else 0
        self.rewards_since_change += trainable
        if self.anchor.active and trainable:
            self._judge_anchor(trainable)
        if steps:
            stats = self._update(steps)
        self.offset = int(fresh[-1]["id"])
        self.version += 1
        full = self._learner_weights()
        weights = {k: full[k] for k in policy_state(self.serving)}
        decision = self._gate()
        info = {"through_id": self.offset, "oldest_feedback_time": fresh[0]["feedback_time"],
                "newest_feedback_time": fresh[-1]["feedback_time"]}
        if decision["publish"]:
            self._publish(weights, info)
        else:
            self.refused = {"version": self.version, "time": time.time(), **decision["estimate"]}
        self._save()
        if self.commit_offsets:  # after the save: a reward retention may remove is one a restart need not read again
            try:
                self.reader.commit_offset(self.offset)
            except Exception as e:  # noqa: BLE001 - the update stands; retention only waits for the next commit
                logger.warning("committing the trainer's read position failed (%s); retention waits for the next", type(e).__name__)
        row = {"version": self.version, "offset": self.offset, "records": len(fresh), "published": decision["publish"],
               "steps": steps, "forgot": forgot,
               **stats}
        self.updates.append(row)
        del self.updates[:-256]
        return row

    def _forget_a_changed_world(self) -> bool:
        """Drop the replay's records from before a significant fall in the answers' score (the
        module `serve.reward_drift` says why): the learner then trains on the world as it is now.
        The score and not the reward: a reward also falls when clients move their preference
        toward cost, or when the policy learns to buy dearer models, and neither makes old records
        wrong. Prices reach the trainer through the live offer, not through this. True if it forgot."""
        scored = [r for r in self.window if r["score"] is not None]  # defaulted rewards have no score
        cut = drop_cut(np.asarray([r["score"] for r in scored]), self.t.drift_z, self.t.drift_min_drop)
        if cut is None:
            return False
        before, after = scored[:cut], scored[cut:]
        self.drift = {"version": self.version + 1, "time": time.time(), "through_id": before[-1]["id"],
                      "score_before": float(np.mean([r["score"] for r in before])),
                      "score_after": float(np.mean([r["score"] for r in after]))}
        self.window = deque((r for r in self.window if r["id"] > self.drift["through_id"]), maxlen=self.t.window)
        self.drift.update(forgotten=len(scored) - len(after), kept=len(self.window))
        self.boost_left = self.settings.exploration.after_forget_rewards
        self.rewards_since_change = 0
        self._end_anchor("forget")
        return True

    def billed_costs(self) -> dict[str, float]:
        """What a live budget prices routes at in place of its token estimate (`serve/pacing.py`). The
        exploration floor keeps every offered model's bills coming."""
        return mean_bills(self.bills)

    def latency_estimates(self) -> dict[str, float]:
        """Each model's recent `latency.quantile` of the latencies clients reported with feedback,
        once it has `latency.min_samples` of them: what a route's `max_latency_s` is compared with."""
        return self.latencies.estimates(REPORTED)

    def exploration_epsilon(self) -> float:
        """The epsilon routes should explore with now: raised for a while after a forget, because
        the model that is best in the changed world is found only by trying it (with epsilon 0.1
        over 6 models, one try per ~60 rounds of a topic). bench/live_loop.py, rounds to 70 % of the
        gap after a shift, slowest of 24 seeds: 800 with forgetting alone, 300 with this too."""
        e = self.settings.exploration
        return max(e.epsilon, e.after_forget_epsilon) if self.boost_left > 0 else e.epsilon

    def steps_for(self, new: int) -> int:
        """Minibatch steps for `new` trainable rewards: `replay_ratio` samples each, within [1, max].

        With `replay_decay` d the ratio falls as d / (d + n) over the n rewards trained since the
        start, the last forget or a new model set: the step-size schedule of stochastic
        approximation, restarted when the world changed. A fixed ratio fits a world that is new
        quickly, but then keeps chasing the noise of single Bernoulli outcomes: on unseen LLMRouter
        tasks served live (bench/live_unseen_tasks.py), routing got worse after its first ~250
        rewards at 128."""
        ratio = self.t.replay_ratio
        if self.t.replay_decay > 0:
            ratio *= self.t.replay_decay / (self.t.replay_decay + self.rewards_since_change)
        return int(min(self.t.max_steps_per_update, max(1, np.ceil(new * ratio / self.t.minibatch_size))))

    def _judge_anchor(self, new: int) -> None:
        """The newest `new` trainable rewards, judged by the critic as it was before it sees them
        (scratch holds the learner's weights of the last update)."""
        rows = self._offered(self.window)[-new:]
        if not rows:
            return
        obs = self._obs_tensors(rows)
        self.anchor.judge(obs, np.asarray([r["action"] for r in rows]), np.asarray([r["mu"] for r in rows]),
                          np.asarray([r["reward"] for r in rows]), self.scratch.critic_values(obs).numpy().astype(np.float64),
                          np.stack([r["allowed_mask"] for r in rows]))
        if not self.anchor.active:
            self._restart_optimizer()

    def _end_anchor(self, reason: str) -> None:
        if self.anchor.end(reason):
            self._restart_optimizer()

    def _restart_optimizer(self) -> None:
        """Adam's moments start afresh when the anchor's pull ends. Its gradients filled the
        second moments, which decay over ~1,000 steps (beta2 0.999), so the steps after it ended
        stayed small: in bench/live_loop.py's synthetic world, 8 seeds, the gap closed after the
        shift (long after the pull ended) was 0.65 against 0.78 without an anchor, and 0.73 with
        the moments restarted."""
        from ray.rllib.core import DEFAULT_MODULE_ID

        def clear(learner) -> None:
            for _, optimizer in learner.get_optimizers_for_module(DEFAULT_MODULE_ID):
                optimizer.state.clear()

        self.learner_group.foreach_learner(clear)

    def _update(self, steps: int) -> dict[str, float]:
        from ray.rllib.core import DEFAULT_MODULE_ID
        from ray.rllib.core.columns import Columns
        from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

        rows = self._offered(self.window)
        m = min(self.t.minibatch_size, len(rows))
        rng = np.random.default_rng(self.version)
        recent = self.t.recent_window
        chosen = []
        for _ in range(steps):
            idx = rng.choice(len(rows), size=m, replace=False)
            if recent and len(rows) > recent:
                # Half of each step from the newest rewards: a changed world shows up in the
                # gradient within ~recent rounds instead of only once the whole window turned over.
                half = m // 2
                idx[half:] = len(rows) - recent + rng.choice(recent, size=m - half, replace=True)
            chosen.append(idx)
        idx = np.concatenate(chosen)
        pick = [rows[i] for i in idx]
        columns = {
            Columns.OBS: observations(pick),
            Columns.ACTIONS: np.asarray([r["action"] for r in pick]),
            Columns.ACTION_LOGP: np.asarray([r["logp"] for r in pick], dtype=np.float32),
            Columns.REWARDS: np.asarray([r["reward"] for r in pick], dtype=np.float32),
        }
        if self.anchor.active:
            from barp_ray.training.learner import ANCHOR_PROBS, ANCHOR_WEIGHT

            columns[ANCHOR_PROBS] = self.anchor.probs(self._obs_tensors(rows))[idx].astype(np.float32)
            columns[ANCHOR_WEIGHT] = np.full(len(pick), self.anchor.coefficient(self.rewards_since_change), dtype=np.float32)
        batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(columns)}, env_steps=len(pick))
        results = self.learner_group.update(batch=batch, minibatch_size=m, num_epochs=1, shuffle_batch_per_epoch=False)
        out = results[0][DEFAULT_MODULE_ID] if isinstance(results, list) else results[DEFAULT_MODULE_ID]
        keep = ("policy_loss", "entropy", "baseline_loss", "reward_mean", "importance_weight_mean")
        return {k: float(getattr(out[k], "peek", lambda: out[k])()) for k in keep if k in out}

    def _gate(self) -> dict[str, Any]:
        """Candidate (the learner's weights, in `scratch`) against the serving weights and the latest
        published versions, on the held-back rewards (`serve/rollout_gate.py`)."""
        rows = self._offered(self.eval_window)
        if not self.rollout.enabled or len(rows) < self.rollout.min_eval:
            return {"publish": True, "estimate": {}}
        decision = self.gate.judge(self.scratch, list(self.references), self._held_back(rows), self.exploration_epsilon())
        self.last_estimate = {"version": self.version, **decision["estimate"]}
        return decision

    def load_checkpoint(self, path: str, mode: str = "publish") -> dict[str, Any]:
        """An operator's checkpoint becomes the next published version. `publish`: no gate, it is
        their call. `gated`: only if the safe-rollout gate, on the held-back rewards, does not find
        it worse than the weights served (and the latest published versions); `dry_run`: judged so,
        never published. {"published", "version", "estimate"}; GateRefused when it cannot or may not."""
        from barp_ray.policy import CheckpointError
        from barp_ray.storage import filesystem

        try:
            fs, root = filesystem(path)
            missing = fs.get_file_info(root).type.name == "NotFound"
        except (OSError, ValueError):  # not a path or URI pyarrow can read at all
            missing = True
        if missing:
            raise CheckpointNotFound(f"path: nothing at {path!r}")
        try:
            candidate = RoutingPolicy.load(path)
        except CheckpointError as e:
            raise ValueError(f"path: {e}") from None
        if candidate.models != self.models:
            raise ValueError(f"path: checkpoint routes {list(candidate.models)}, this service routes {list(self.models)}")
        if candidate.reading != self.reading:
            raise ValueError(f"path: checkpoint reads prompts as {candidate.reading}, this service as {self.reading}: "
                             f"the logged contexts would not fit it")
        mine, theirs = policy_state(self.serving), policy_state(candidate.module)
        bad = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
        if bad or set(theirs) - set(mine):
            bad = bad or sorted(set(theirs) - set(mine))
            raise ValueError(f"path: incompatible network (mismatched tensors {bad[:3]})")
        estimate = None
        if mode != "publish":
            judged = copy.deepcopy(self.serving)  # today's offer and prices, the checkpoint's policy
            load_policy_state(judged, theirs)
            decision = self._judge(judged)
            estimate = decision["estimate"]
            if mode == "dry_run":
                return {"published": False, "version": self.published_version, "estimate": estimate}
            if not decision["publish"]:
                worse = estimate["against"]
                raise GateRefused(f"path: refused by the rollout gate: estimated {estimate['candidate']:+.4f} against "
                                  f"{worse['estimate']:+.4f} for version {worse['version']} (difference se "
                                  f"{worse['difference_se']:.4f}, margin {estimate['margin']:g}) on {estimate['n']} "
                                  f"held-back rewards", estimate)
        # Published first: writing the weights is what can fail (an unwritable state_dir), and until it has
        # succeeded nothing else may change (a learner on the operator's weights, or no yardstick left for
        # the gate, failed every later update).
        self.version += 1
        try:
            self._publish({k: theirs[k].clone() for k in mine}, {"through_id": self.offset, "checkpoint": path})
        except BaseException:
            self.version -= 1
            raise
        newest = self.references[-1]  # _publish put the operator's weights there
        self.references.clear()  # the operator's weights are the new yardstick, not what they replaced
        self.references.append(newest)
        self._adopt(self.learner_group, theirs)
        self._end_anchor("operator checkpoint")
        self._save()
        return {"published": True, "version": self.version, "estimate": estimate}

    def _judge(self, module) -> dict[str, Any]:
        """`module` against the serving weights and the latest published versions on the held-back
        rewards, with the learner's critic (which never trained on them)."""
        rows = self._offered(self.eval_window)
        if len(rows) < self.rollout.min_eval:
            raise GateRefused(f"path: {len(rows)} held-back rewards so far; judging a checkpoint needs "
                              f"rollout.min_eval ({self.rollout.min_eval})")
        self._learner_weights()
        return self.gate.judge(module, list(self.references), self._held_back(rows), self.exploration_epsilon())

    def _held_back(self, rows: list[dict]) -> HeldBack:
        obs = self._obs_tensors(rows)
        return HeldBack(obs=obs, actions=np.asarray([r["action"] for r in rows]),
                        logged=np.asarray([r["mu"] for r in rows]), rewards=np.asarray([r["reward"] for r in rows]),
                        q=self.scratch.critic_values(obs).numpy().astype(np.float64))

    def close(self) -> None:
        """Stop learner actors (num_learners > 0) and close the store connection."""
        self.learner_group.shutdown()
        self.reader.close()

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version, "published_version": self.published_version, "offset": self.offset,
            "reported_latency_s": {m: round(v, 4) for m, v in self.latency_estimates().items()},
            "updates": len(self.updates), "replay": len(self.window), "held_back": len(self.eval_window),
            "last_estimate": self.last_estimate, "last_refused": self.refused, "last_drift": self.drift,
            "exploration": {"epsilon": self.exploration_epsilon(), "boost_rewards_left": self.boost_left},
            "rewards_since_change": self.rewards_since_change,
            "anchor": self.anchor.status(self.rewards_since_change),
            "last_published": self.published[-1] if self.published else None,
        }
