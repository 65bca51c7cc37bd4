"""BaRP as an RLlib Algorithm: sample rounds on the EnvRunners, one REINFORCE update, sync weights.

Owning `training_step` (as RLlib's VPG example does) lets the loop pass flat numpy batches
straight to the LearnerGroup, skipping the episode->batch connector pipeline that would
otherwise dominate one-step episodes.
"""
from __future__ import annotations

import math

from ray.rllib.algorithms import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from barp_ray.rl_module import BaRPRLModule
from barp_ray.training.env_runner import BanditEnvRunner, to_train_batch
from barp_ray.training.learner import BaRPTorchLearner

BASELINES = ("learned", "mean", "none", "critic")


class BaRPConfig(AlgorithmConfig):
    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or BaRP)
        self.entropy_coeff = 0.05
        self.baseline = "learned"
        self.baseline_coeff = 0.5
        self.normalize_advantages = True
        self.advantage_scale = "batch"
        self.entropy_floor = 0.0  # > 0: nats each w_q band's mean entropy is held above
        self.importance_weight_clip = 0.0  # 0: on-policy, no importance weights
        self.critic_kl_coeff = 0.0
        self.critic_temperature = 0.1
        self.critic_shrinkage = 1.0  # < 1: the policy reads the critic's quality pulled toward its batch means
        self.critic_shrinkage_gate = "none"  # cost: that pull scaled by w_c
        self.correction_coeff = 1.0  # < 1: the doubly robust correction weighed down (trust the critic more)
        self.weight_decay = 0.0  # > 0: AdamW's decoupled decay instead of Adam
        self.rounds_per_iteration = 4096
        self.num_envs_per_env_runner = 1024
        self.env_runner_cls = BanditEnvRunner
        # BanditEnvRunner has no connector state worth merging or broadcasting (5-10 ms/iteration).
        self.merge_env_runner_states = False
        self.broadcast_env_runner_states = False
        self.lr = 1e-3
        self.grad_clip = 1.0
        self.grad_clip_by = "global_norm"

    def training(
        self,
        *,
        entropy_coeff=NotProvided,
        baseline=NotProvided,
        baseline_coeff=NotProvided,
        importance_weight_clip=NotProvided,
        critic_kl_coeff=NotProvided,
        critic_temperature=NotProvided,
        critic_shrinkage=NotProvided,
        critic_shrinkage_gate=NotProvided,
        correction_coeff=NotProvided,
        normalize_advantages=NotProvided,
        advantage_scale=NotProvided,
        entropy_floor=NotProvided,
        weight_decay=NotProvided,
        rounds_per_iteration=NotProvided,
        **kwargs,
    ) -> "BaRPConfig":
        super().training(**kwargs)
        for name, value in (
            ("entropy_coeff", entropy_coeff),
            ("baseline", baseline),
            ("baseline_coeff", baseline_coeff),
            ("importance_weight_clip", importance_weight_clip),
            ("critic_kl_coeff", critic_kl_coeff),
            ("critic_temperature", critic_temperature),
            ("critic_shrinkage", critic_shrinkage),
            ("critic_shrinkage_gate", critic_shrinkage_gate),
            ("correction_coeff", correction_coeff),
            ("normalize_advantages", normalize_advantages),
            ("advantage_scale", advantage_scale),
            ("entropy_floor", entropy_floor),
            ("weight_decay", weight_decay),
            ("rounds_per_iteration", rounds_per_iteration),
        ):
            if value is not NotProvided:
                setattr(self, name, value)
        return self

    def validate(self) -> None:
        super().validate()
        if self.baseline not in BASELINES:
            raise ValueError(f"training.baseline must be one of {BASELINES}, got {self.baseline!r}")

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=BaRPRLModule)

    def get_default_learner_class(self):
        return BaRPTorchLearner


class BaRP(Algorithm):
    @classmethod
    def get_default_config(cls) -> BaRPConfig:
        return BaRPConfig()

    def training_step(self) -> None:
        cfg: BaRPConfig = self.config
        remote = self.env_runner_group.num_remote_env_runners()
        per_runner = math.ceil(cfg.rounds_per_iteration / max(1, remote))
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER), reduce="mean", window=1):
            out = self.env_runner_group.foreach_env_runner(
                lambda runner: (runner.sample(num_timesteps=per_runner), runner.get_metrics()),
                local_env_runner=remote == 0,
            )
        self.metrics.aggregate([m for _, m in out], key=ENV_RUNNER_RESULTS)
        columns = to_train_batch([b for b, _ in out])
        n = len(columns["rewards"])
        batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(columns)}, env_steps=n)

        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER), reduce="mean", window=1):
            learner_results = self.learner_group.update(
                batch=batch,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0
                    )
                },
                num_epochs=1,
                minibatch_size=cfg.minibatch_size if cfg.minibatch_size else None,
            )
        self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)

        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER), reduce="mean", window=1):
            self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
