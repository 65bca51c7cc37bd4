"""Training configuration: YAML in, one typed dataclass per section out, validated at load.

Every error names the section and field (`training.lr: must be > 0, got -1`) so a bad YAML
fails in one readable line, before Ray starts.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from envs.preference import PreferenceSampler, check_simplex


class ConfigError(ValueError):
    """A config file or value is invalid; str(e) is a one-line message naming the field."""


SOURCES = ("synthetic", "llmrouter", "routerbench", "records")
SPLITS = ("random", "per_task", "tasks", "provided")
PROMPT_SAMPLINGS = ("uniform", "per_task")  # env.prompt_sampling: how the simulated rounds draw train prompts
POLICY_HEADS = ("concat", "preference_gated", "price_aware", "cost_aware", "model_conditioned")
CONDITIONINGS = ("concat", "film")  # how phi(w) enters the decision head
# How a shrinkage (critic or decision) is gated: evenly, or scaled by w_c (none at w_q = 1).
SHRINKAGE_GATES = ("none", "cost")
# Which rounds each member of an ensemble (policy.members > 1) learns from.
MEMBER_DATA = ("own", "shared", "bootstrap")
# Heads with one output per trained model that read today's prices (RLModule.set_prices, logged prices).
PRICE_HEADS = ("price_aware", "cost_aware")


@dataclass
class DataConfig:
    source: str = "synthetic"
    path: str | None = None  # file or directory for non-synthetic sources
    synthetic_prompts: int = 3000
    synthetic_seed: int = 0
    output_tokens: Union[int, dict] = 256  # llmrouter pricing: fixed, or per task with a "default"
    split: str = "random"  # random | per_task (test_per_task prompts of each of test_tasks) | tasks (hold out whole tasks) | provided (llmrouter's own train/test files)
    test_fraction: float = 0.2
    test_per_task: int = 25  # per_task: prompts held out from each task
    test_tasks: list = field(default_factory=list)  # per_task: the tasks to hold prompts out of (empty: all)
    test_repeat_share: dict = field(default_factory=dict)  # per_task: {task: share of its held-out prompts that also train}
    held_out_tasks: list = field(default_factory=list)
    seed: int = 0
    max_prompts: int | None = None  # subsample (before splitting) for quick runs
    exclude_models: list = field(default_factory=list)  # drop these models' columns (e.g. one held out for a zero-shot check)

    def validate(self) -> None:
        _one_of("data.source", self.source, SOURCES)
        if not all(isinstance(m, str) and m for m in self.exclude_models):
            raise ConfigError(f"data.exclude_models: must be a list of model names, got {self.exclude_models!r}")
        _one_of("data.split", self.split, SPLITS)
        if self.source != "synthetic" and not self.path:
            raise ConfigError(f"data.path: required for data.source={self.source!r}")
        if self.source == "synthetic" and self.path:  # else a forgotten data.source trains on the synthetic world, silently
            raise ConfigError(f"data.path: {self.path!r} is set but data.source is 'synthetic', which reads no file; "
                              f"set data.source to one of {[s for s in SOURCES if s != 'synthetic']}")
        if self.path and self.source != "synthetic" and not _path_exists(self.path):
            raise ConfigError(f"data.path: {self.path!r} does not exist")
        _positive("data.synthetic_prompts", self.synthetic_prompts)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction: must be in (0, 1), got {self.test_fraction}")
        _positive("data.test_per_task", self.test_per_task)
        if not all(isinstance(t, str) and t for t in self.test_tasks):
            raise ConfigError(f"data.test_tasks: must be a list of task names, got {self.test_tasks!r}")
        if not isinstance(self.test_repeat_share, dict):
            raise ConfigError(f"data.test_repeat_share: must map task names to shares in [0, 1], got {self.test_repeat_share!r}")
        for task, share in self.test_repeat_share.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
                raise ConfigError(f"data.test_repeat_share.{task}: must be a share in [0, 1], got {share!r}")
        if self.test_repeat_share and self.split != "per_task":
            raise ConfigError("data.test_repeat_share: applies to data.split per_task only")
        if self.split == "tasks" and not self.held_out_tasks:
            raise ConfigError("data.held_out_tasks: must name at least one task when data.split is 'tasks'")
        if self.split == "provided" and self.source != "llmrouter":
            raise ConfigError("data.split: 'provided' is only available for data.source 'llmrouter'")
        if self.max_prompts is not None:
            _positive("data.max_prompts", self.max_prompts)
        if isinstance(self.output_tokens, dict):
            for task, n in self.output_tokens.items():
                if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                    raise ConfigError(f"data.output_tokens.{task}: must be a positive integer, got {n!r}")
        else:
            _positive("data.output_tokens", self.output_tokens)


@dataclass
class EncoderConfig:
    model: str = "packaged"  # packaged copy of all-MiniLM-L6-v2, a local path, or a hub name (online)
    cache_dir: str | None = None  # default: $BARP_CACHE_DIR or ~/.cache/barp-ray
    batch_size: int = 64
    text_stats: bool = False  # also read six text statistics of the prompt (length, lines, digits, code, ...)

    def validate(self) -> None:
        _positive("encoder.batch_size", self.batch_size)
        if not isinstance(self.text_stats, bool):
            raise ConfigError(f"encoder.text_stats: must be true or false, got {self.text_stats!r}")


@dataclass
class EnvConfig:
    tau: Union[float, str] = "auto"  # dollars; "auto": the priciest model's mean cost on the train split
    preference: dict = field(default_factory=lambda: {"kind": "uniform"})
    eval_preference: list = field(default_factory=lambda: [0.8, 0.2])  # reported in logs and tests
    prompt_sampling: str = "uniform"  # uniform: every train prompt equally often | per_task: every task equally often

    def validate(self) -> None:
        if isinstance(self.tau, str):
            if self.tau != "auto":
                raise ConfigError(f"env.tau: must be a positive number or 'auto', got {self.tau!r}")
        elif not self.tau > 0:
            raise ConfigError(f"env.tau: must be > 0, got {self.tau}")
        _one_of("env.prompt_sampling", self.prompt_sampling, PROMPT_SAMPLINGS)
        try:
            PreferenceSampler.from_dict(self.preference)
        except ValueError as e:
            raise ConfigError(f"env.{e}") from None
        try:
            check_simplex(self.eval_preference, "env.eval_preference")
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclass
class PolicyConfig:
    preference_hidden: list = field(default_factory=lambda: [32])
    head_hidden: list = field(default_factory=lambda: [256, 128])
    head: str = "concat"  # concat: logits from [h(x); phi(w)] (the paper) | preference_gated: w_q U + w_c V | price_aware: concat - w_c * s * log(price) | cost_aware: w_q * concat - w_c * s * normalised cost | model_conditioned: scores (prompt, preference, model card), any model set
    model_id_dim: int = 16  # model_conditioned: learned vector per trained model
    model_id_dropout: float = 0.1  # model_conditioned: chance a (round, model) pair is scored as an unknown model
    quality_gate: bool = True  # cost_aware: the learned logits are multiplied by w_q (False: added as they are)
    cost_scale: float = 5.0  # cost_aware: initial s in w_c * s * cost (how sharply cost counts; Adam moves it little)
    embedding_dropout: float = 0.0  # > 0: dropout on h(x) in the training forward only (policy and critic), against fitting the train tasks
    hidden_dropout: float = 0.0  # > 0: dropout after each hidden layer of the decision head and the critic, training forward only
    critic_dropout: float = 0.0  # > 0: the critic fits through dropout on h(x) and its hidden layers (training only); the policy follows its whole-net estimate
    members: int = 1  # > 1: an ensemble of that many policies (each with its own critic), one loss each; routing reads their mean probabilities
    # members > 1: which rounds each member learns from: own (the rounds its policy played, as if trained apart;
    # training.rounds_per_iteration E times a single policy's gives each member as many) | shared (all, drawn
    # from the mixture) | bootstrap (its own resample of those)
    member_data: str = "own"
    critic_hidden: list | None = None  # the training critic's hidden layers (None: one, as wide as head_hidden's last)
    conditioning: str = "concat"  # how phi(w) enters the decision head: concat [h(x); phi(w)] (the paper) | film (each hidden layer scaled and shifted by phi(w))
    # < 1: the routing decision (serving, evaluation) keeps this share of each prompt's own deviation from
    # the average training prompt's decision head output (1: off; training rollouts are never shrunk)
    decision_shrinkage: float = 1.0
    decision_shrinkage_gate: str = "none"  # cost: the pull above is scaled by w_c (none at w_q = 1)
    # > 1: the routing decision (serving, evaluation) charges each model's known price this many times what
    # training did (price heads). On tasks the policy never saw the price is a fact and the score a guess
    # from other tasks, so the decision trusts the learned quality less against it (1: off; rollouts never)
    decision_cost_multiplier: float = 1.0

    def validate(self) -> None:
        _one_of("policy.head", self.head, POLICY_HEADS)
        _one_of("policy.conditioning", self.conditioning, CONDITIONINGS)
        if self.conditioning == "film" and self.head == "model_conditioned":
            raise ConfigError("policy.conditioning: 'film' is for the decision head of the other heads; "
                              "model_conditioned has its own towers")
        _positive("policy.model_id_dim", self.model_id_dim)
        _between("policy.decision_shrinkage", self.decision_shrinkage, 0.0, 1.0)
        _one_of("policy.decision_shrinkage_gate", self.decision_shrinkage_gate, SHRINKAGE_GATES)
        if self.decision_shrinkage < 1.0 and self.head == "model_conditioned":
            raise ConfigError("policy.decision_shrinkage: applies to the decision head of the other heads; "
                              "model_conditioned scores model cards")
        if self.decision_shrinkage_gate != "none" and self.decision_shrinkage >= 1.0:
            raise ConfigError("policy.decision_shrinkage_gate: gates a shrinkage; set policy.decision_shrinkage < 1")
        if why := cost_multiplier_problem(self.decision_cost_multiplier, self.head):
            raise ConfigError(f"policy.decision_cost_multiplier: {why}")
        _positive("policy.cost_scale", self.cost_scale)
        if not isinstance(self.quality_gate, bool):
            raise ConfigError(f"policy.quality_gate: must be true or false, got {self.quality_gate!r}")
        if not 0.0 <= self.model_id_dropout < 1.0:
            raise ConfigError(f"policy.model_id_dropout: must be in [0, 1), got {self.model_id_dropout}")
        if not 0.0 <= self.embedding_dropout < 1.0:
            raise ConfigError(f"policy.embedding_dropout: must be in [0, 1), got {self.embedding_dropout}")
        if not 0.0 <= self.critic_dropout < 1.0:
            raise ConfigError(f"policy.critic_dropout: must be in [0, 1), got {self.critic_dropout}")
        _positive("policy.members", self.members)  # an int: loading rejects other types
        _one_of("policy.member_data", self.member_data, MEMBER_DATA)
        if self.members > 1 and self.head == "model_conditioned":
            raise ConfigError("policy.members: an ensemble of the fixed-K heads, not model_conditioned")
        if not 0.0 <= self.hidden_dropout < 1.0:
            raise ConfigError(f"policy.hidden_dropout: must be in [0, 1), got {self.hidden_dropout}")
        if self.hidden_dropout > 0 and (self.conditioning == "film" or self.head == "model_conditioned"):
            raise ConfigError("policy.hidden_dropout: applies to the MLP decision head and critic; not with "
                              "conditioning film or head model_conditioned")
        for name in ("preference_hidden", "head_hidden", "critic_hidden"):
            sizes = getattr(self, name)
            if name == "critic_hidden" and sizes is None:
                continue
            if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
                raise ConfigError(f"policy.{name}: must be a non-empty list of positive integers, got {sizes!r}")


@dataclass
class TrainingConfig:
    iterations: int = 150
    rounds_per_iteration: int = 4096  # simulated bandit rounds (one-step episodes) per update
    minibatch_size: int | None = None  # None: one gradient step per iteration
    lr: float = 1e-3
    lr_final: float | None = None  # set: the learning rate falls linearly from lr to this over the iterations
    entropy_coeff: float = 0.05
    entropy_coeff_final: float | None = None  # set: the entropy bonus falls linearly from entropy_coeff to this over the iterations
    baseline: str = "learned"  # learned | mean | none | critic (per-model reward critic, doubly robust)
    baseline_coeff: float = 0.5
    critic_kl_coeff: float = 0.0  # critic only: pull the policy toward softmax(Q / critic_temperature)
    critic_temperature: float = 0.1
    # critic only, reward-shaped forms: < 1 scales each prompt's predicted quality deviation from the
    # model's mean by this before the policy reads it (1: off)
    critic_shrinkage: float = 1.0
    critic_shrinkage_gate: str = "none"  # cost: the shrinkage above is scaled by w_c (full at w_q = 0, none at w_q = 1)
    # critic only: weight of the doubly robust correction rho (r - Q(a_t)) log pi(a_t); 1 is the unbiased
    # estimator, < 1 trusts the critic's smoothed estimates more than each round's own outcome
    correction_coeff: float = 1.0
    critic_form: str = "free"  # critic only: free Q(x, w, .) | reward: w_q q(x, .) - w_c c(x, .), the reward's shape | known_cost: w_q q(x, .) - w_c c_bar (cost_aware's known costs)
    exploration_floor: float = 0.0  # rollouts draw from (1 - eps) pi + eps / K; importance-corrected
    normalize_advantages: bool = True  # divide advantages by their batch std (scale-free step size)
    advantage_scale: str = "batch"  # batch: one std for the batch | preference: the std of each w_q band
    entropy_floor: float = 0.0  # > 0: a hinge penalty holds each w_q band's mean policy entropy above this (nats)
    grad_clip: float = 1.0
    weight_decay: float = 0.0  # > 0: AdamW with this decoupled decay (per step: w -= lr * decay * w)
    # Early stopping: > 0 holds this share of the train prompts out of the bandit rounds; every
    # validate_every iterations the greedy reward over the 11-point preference sweep is measured on
    # them, and the checkpoint keeps the best weights (0: the last weights, no prompt held out).
    validation_fraction: float = 0.0
    validate_every: int = 10
    # Tail weight averaging (SWA): < 1 writes the mean of the weights of every iteration after this
    # share of training (0.5: the second half) instead of the last iterate; 1: the last weights.
    average_from: float = 1.0
    seed: int = 0
    init_from: str | None = None  # start from this checkpoint's weights (models matched by name; new ones start as "unknown")

    def validate(self) -> None:
        _positive("training.iterations", self.iterations)
        _positive("training.rounds_per_iteration", self.rounds_per_iteration)
        if self.minibatch_size is not None:
            _positive("training.minibatch_size", self.minibatch_size)
        _positive("training.lr", self.lr)
        if self.lr_final is not None:
            _positive("training.lr_final", self.lr_final)
        if self.entropy_coeff_final is not None and self.entropy_coeff_final < 0:
            raise ConfigError(f"training.entropy_coeff_final: must be >= 0, got {self.entropy_coeff_final}")
        _non_negative("training.entropy_coeff", self.entropy_coeff)
        _one_of("training.baseline", self.baseline, ("learned", "mean", "none", "critic"))
        _non_negative("training.baseline_coeff", self.baseline_coeff)
        _non_negative("training.critic_kl_coeff", self.critic_kl_coeff)
        _positive("training.critic_temperature", self.critic_temperature)
        _one_of("training.critic_form", self.critic_form, ("free", "reward", "known_cost"))
        _between("training.critic_shrinkage", self.critic_shrinkage, 0.0, 1.0)
        if self.critic_shrinkage < 1.0 and (self.baseline != "critic" or self.critic_form == "free"):
            raise ConfigError("training.critic_shrinkage: needs training.baseline critic with critic_form reward or known_cost")
        _one_of("training.critic_shrinkage_gate", self.critic_shrinkage_gate, SHRINKAGE_GATES)
        _between("training.correction_coeff", self.correction_coeff, 0.0, 1.0)
        if self.correction_coeff < 1.0 and self.baseline != "critic":
            raise ConfigError("training.correction_coeff: needs training.baseline critic (it weights the critic's correction)")
        if self.critic_shrinkage_gate != "none" and self.critic_shrinkage >= 1.0:
            raise ConfigError("training.critic_shrinkage_gate: gates a shrinkage; set training.critic_shrinkage < 1")
        _one_of("training.advantage_scale", self.advantage_scale, ("batch", "preference"))
        _non_negative("training.entropy_floor", self.entropy_floor)
        if not 0.0 <= self.exploration_floor < 1.0:
            raise ConfigError(f"training.exploration_floor: must be in [0, 1), got {self.exploration_floor}")
        _positive("training.grad_clip", self.grad_clip)
        _non_negative("training.weight_decay", self.weight_decay)
        _between("training.validation_fraction", self.validation_fraction, 0.0, 0.5)
        _positive("training.validate_every", self.validate_every)
        _between("training.average_from", self.average_from, 0.0, 1.0)
        if self.average_from < 1.0 and self.validation_fraction > 0:
            raise ConfigError("training.average_from: cannot be combined with training.validation_fraction "
                              "(early stopping keeps one iteration's weights; averaging keeps the tail's mean)")
        if self.init_from is not None and not _path_exists(self.init_from):
            raise ConfigError(f"training.init_from: {self.init_from!r} does not exist")


@dataclass
class ScaleConfig:
    num_env_runners: int = 0  # 0: sample in the driver process (laptop); N: N rollout actors
    num_envs_per_env_runner: int = 1024  # bandit rounds simulated per vectorised step on each runner
    num_cpus_per_env_runner: float = 1
    num_learners: int = 0  # 0: learn in the driver process; N: N learner actors (DDP)
    num_gpus_per_learner: float = 0  # > 0 puts each learner on a GPU
    # On a cluster a node can vanish mid-run: its env runners are recreated on the nodes left
    # (RLlib's fault tolerance) and sampling goes on with the healthy ones meanwhile.
    restart_failed_env_runners: bool = True
    custom_resources_per_env_runner: dict = field(default_factory=dict)  # e.g. {"rollout_node": 1}

    def validate(self) -> None:
        _non_negative("scale.num_env_runners", self.num_env_runners)
        _positive("scale.num_envs_per_env_runner", self.num_envs_per_env_runner)
        _positive("scale.num_cpus_per_env_runner", self.num_cpus_per_env_runner)
        _non_negative("scale.num_learners", self.num_learners)
        _non_negative("scale.num_gpus_per_learner", self.num_gpus_per_learner)
        if not isinstance(self.restart_failed_env_runners, bool):
            raise ConfigError(f"scale.restart_failed_env_runners: must be true or false, got {self.restart_failed_env_runners!r}")
        if not isinstance(self.custom_resources_per_env_runner, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in self.custom_resources_per_env_runner.items()):
            raise ConfigError("scale.custom_resources_per_env_runner: must map resource names to amounts >= 0, "
                              f"got {self.custom_resources_per_env_runner!r}")


@dataclass
class OutputConfig:
    checkpoint_dir: str = "checkpoints/barp-default"
    log_every: int = 10

    def validate(self) -> None:
        _positive("output.log_every", self.log_every)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> "TrainConfig":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        if self.policy.head == "model_conditioned" and self.training.baseline == "critic" and self.training.critic_form != "reward":
            raise ConfigError("training.critic_form: policy.head model_conditioned needs 'reward' (a per-model critic "
                              "that can score any model card)")
        if self.policy.head == "model_conditioned" and self.training.critic_shrinkage < 1.0:
            raise ConfigError("training.critic_shrinkage: not with policy.head model_conditioned (its critic scores model "
                              "cards, with no per-model quality on h(x) to shrink)")
        if self.training.critic_form == "known_cost" and self.policy.head != "cost_aware":
            raise ConfigError("training.critic_form: 'known_cost' needs policy.head cost_aware (it reads that head's "
                              "known normalised costs)")
        if self.policy.critic_dropout > 0 and not (self.training.baseline == "critic" and self.training.critic_form in ("reward", "known_cost")
                                                   and self.policy.head != "model_conditioned"):
            raise ConfigError("policy.critic_dropout: needs training.baseline critic with critic_form reward or known_cost "
                              "(a per-model reward model on h(x)), and not head model_conditioned")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_dict(raw: Any, where: str = "config") -> TrainConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections, got {type(raw).__name__}")
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; known: {sorted(sections)}")
    built = {}
    for name, f in sections.items():
        cls = f.default_factory().__class__
        built[name] = _build_section(cls, raw.get(name) or {}, name)
    return TrainConfig(**built).validate()


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """None -> the embedded default (synthetic world). `overrides` (`section.field=value`) replace the
    file's values before anything is checked: a cluster job overrides a path that exists only where
    the file was written (`--set data.path=...`), so the file's own must not be checked first."""
    raw = {} if path is None else read_yaml(Path(path), "config file")
    if overrides and isinstance(raw or {}, dict):
        raw = _overridden(dict(raw or {}), overrides)
    return from_dict(raw, where="config" if path is None else str(path))


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content, or a one-line ConfigError naming the file (and the line, if it can)."""
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{at}: {getattr(e, 'problem', e)}") from None


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """`section.field=value` strings from the CLI; values parsed as YAML scalars/lists."""
    return from_dict(_overridden(cfg.to_dict(), overrides), where="overrides")


def _overridden(raw: dict, overrides: list[str]) -> dict:
    sections = {f.name: f.default_factory().__class__ for f in dataclasses.fields(TrainConfig)}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        key, value = item.split("=", 1)
        section, name, *inner = key.split(".")
        if section not in sections:
            raise ConfigError(f"override {item!r}: unknown section {section!r}")
        if not isinstance(raw.get(section) or {}, dict):
            raise ConfigError(f"{section}: must be a mapping, got {type(raw[section]).__name__}")
        body = dict(raw.get(section) or {})
        body[name] = _nested_set(body[name] if name in body else _field_default(sections[section], name),
                                 inner, yaml.safe_load(value), f"{section}.{name}")
        raw[section] = body
    return raw


def _field_default(section_cls: type, name: str) -> Any:
    """A field's default, so `env.preference.alpha=...` edits the default mapping when the file
    leaves the field out (an unknown name is left for the section's own check to name)."""
    for f in dataclasses.fields(section_cls):
        if f.name == name:
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return None


def _nested_set(current: Any, path: list[str], value: Any, where: str) -> Any:
    """`value` at `path` inside a mapping field (`env.preference.kind=dirichlet` keeps the rest of
    `env.preference`); an empty path replaces the field whole."""
    if not path:
        return value
    if current is None:
        current = {}
    if not isinstance(current, dict):
        raise ConfigError(f"{where}: is not a mapping ({current!r}), so {where}.{path[0]} cannot be set; set {where} whole")
    return {**current, path[0]: _nested_set(current.get(path[0]), path[1:], value, f"{where}.{path[0]}")}


def _build_section(cls: type, raw: Any, section: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{section}: unknown field(s) {unknown}; known: {sorted(names)}")
    values = {k: _coerce(f"{section}.{k}", v, hints[k]) for k, v in raw.items()}
    return cls(**values)


_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Accept a value if it matches one member of the annotated type (ints pass as floats)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    for opt in options:
        if opt is type(None) and value is None:
            return None
        origin = typing.get_origin(opt) or opt
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-4 (no dot) as a string
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, list, dict) and isinstance(value, origin):
            return value
    expected = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")


def cost_multiplier_problem(m, head: str) -> str | None:
    """Why m cannot be the decision cost multiplier of a policy with this head (None: it can). One
    rule for the config, the module and serving's live setting."""
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 < m <= 1000.0:
        return f"must be a number in (0, 1000] (1: off), got {m!r}"
    if m != 1.0 and head not in PRICE_HEADS:
        return f"scales the known price term of the {' and '.join(PRICE_HEADS)} heads; head {head!r} has none"
    return None


def _positive(name: str, v) -> None:
    if not v > 0:
        raise ConfigError(f"{name}: must be > 0, got {v}")


def _non_negative(name: str, v) -> None:
    if not v >= 0:
        raise ConfigError(f"{name}: must be >= 0, got {v}")


def _between(name: str, v, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"{name}: must be in [{lo:g}, {hi:g}], got {v!r}")


def _one_of(name: str, v, options) -> None:
    if v not in options:
        raise ConfigError(f"{name}: must be one of {list(options)}, got {v!r}")


def _path_exists(p: str) -> bool:
    return "://" in p or Path(p).exists()


def with_head(train_cfg: TrainConfig, head: str) -> TrainConfig:
    """The same training with another `policy.head` (`eval.compare_heads`, `bench/new_model.py`),
    each setting the other head cannot take replaced by the nearest one it can: the known-cost
    critic reads the cost-aware head's costs, so another head gets the reward-shaped critic; the
    model-conditioned head scores model cards with its own towers, so it trains one policy (with
    a single policy's share of the rounds) without the fixed-K heads' critic dropout or shrinkage,
    hidden dropout, FiLM or decision shrinkage; a head without a known price term decides without the
    decision cost multiplier."""
    sets = [f"policy.head={head}"]
    if head not in PRICE_HEADS:  # no known price term to charge
        sets.append("policy.decision_cost_multiplier=1.0")
    if train_cfg.training.critic_form == "known_cost" and head != "cost_aware":
        sets.append("training.critic_form=reward")
    if head == "model_conditioned":
        p = train_cfg.policy
        sets += ["policy.critic_dropout=0.0", "policy.hidden_dropout=0.0", "policy.conditioning=concat",
                 "policy.decision_shrinkage=1.0", "training.critic_shrinkage=1.0", "training.critic_shrinkage_gate=none"]
        if p.members > 1:
            rounds = max(1, train_cfg.training.rounds_per_iteration // p.members)
            sets += ["policy.members=1", f"training.rounds_per_iteration={rounds}"]
    return apply_overrides(train_cfg, sets)
