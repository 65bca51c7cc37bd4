"""One training run: data -> RLlib Algorithm -> checkpoint (weights, metadata, curves), scored on the test split.

Runs the same way on a laptop (no config: the embedded synthetic world, 0 env runners) and
under `ray job submit` on a cluster (RAY_ADDRESS is set there; scale knobs come from YAML).
The command line is `barp_ray/train.py`.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from barp_ray.config import PRICE_HEADS, ConfigError, TrainConfig  # noqa: E402
from barp_ray.prompt_stats import NAMES as TEXT_STATS  # noqa: E402

ENV_NAME = "barp-routing"


@dataclass
class TrainResult:
    checkpoint: str
    history: list[dict]
    evaluation: dict
    seconds: float
    module: object = None  # the trained RLModule, in memory (for callers that continue with it)
    data: object = None  # the PreparedData it trained and was scored on (for callers that score it further)


def model_cards(cfg: TrainConfig, table) -> list | None:
    """The training models' cards (ModelCard), for the heads that read prices: price_aware and
    cost_aware take their blended prices, model_conditioned the cards themselves. None for the other heads."""
    if cfg.policy.head not in (*PRICE_HEADS, "model_conditioned"):
        return None
    from barp_ray.model_cards import CardError, cards_for

    try:
        return cards_for(table.models, table.prices, table.sizes, where=f"data ({table.source})")
    except CardError as e:
        raise ConfigError(f"policy.head: {cfg.policy.head} needs a positive price for every model: {e}") from None


def mean_normalized_costs(table, tau: float) -> list[float]:
    """Each model's min(cost / tau, 1) averaged over the training prompts: the cost_aware head's
    known cost per model (the full-information routers use the same number)."""
    from envs.reward import normalized_cost

    return [max(float(c), 1e-9) for c in normalized_cost(table.costs, tau).mean(axis=0)]


def build_algo_config(cfg: TrainConfig, data_ref, tau: float, cards: list | None = None, costs: list[float] | None = None,
                      reference: list[float] | None = None):
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    from barp_ray.rl_module import BaRPRLModule
    from barp_ray.training.algorithm import BaRPConfig
    from envs.routing_env import RoutingBanditEnv

    if cfg.policy.head == "cost_aware" and costs is None:
        raise ConfigError("policy.head: cost_aware needs each model's normalised cost (costs=mean_normalized_costs(table, tau))")
    if cfg.policy.decision_shrinkage < 1.0 and reference is None:
        raise ConfigError("policy.decision_shrinkage: needs the mean training embedding (reference=embeddings.mean(0))")
    # Kept with every checkpoint whose head can shrink, so serving can turn the shrinkage on live.
    shrinkable = reference is not None and cfg.policy.head != "model_conditioned"
    register_env(ENV_NAME, lambda env_config: RoutingBanditEnv(env_config))
    t, s = cfg.training, cfg.scale
    return (
        BaRPConfig()
        .environment(
            ENV_NAME,
            env_config={"data": data_ref, "tau": tau, "preference": cfg.env.preference, "seed": t.seed},
        )
        .env_runners(
            num_env_runners=s.num_env_runners,
            num_envs_per_env_runner=s.num_envs_per_env_runner,
            num_cpus_per_env_runner=s.num_cpus_per_env_runner,
            custom_resources_per_env_runner=dict(s.custom_resources_per_env_runner),
        )
        .fault_tolerance(restart_failed_env_runners=s.restart_failed_env_runners,
                         ignore_env_runner_failures=s.restart_failed_env_runners)
        .learners(num_learners=s.num_learners, num_gpus_per_learner=s.num_gpus_per_learner)
        .training(
            # RLlib's piecewise-linear schedule over sampled rounds; past its end it stays at lr_final.
            lr=t.lr if t.lr_final is None else [[0, t.lr], [t.iterations * t.rounds_per_iteration, t.lr_final]],
            entropy_coeff=t.entropy_coeff if t.entropy_coeff_final is None else
            [[0, t.entropy_coeff], [t.iterations * t.rounds_per_iteration, t.entropy_coeff_final]],
            baseline=t.baseline,
            baseline_coeff=t.baseline_coeff,
            critic_kl_coeff=t.critic_kl_coeff,
            critic_temperature=t.critic_temperature,
            critic_shrinkage=t.critic_shrinkage,
            critic_shrinkage_gate=t.critic_shrinkage_gate,
            correction_coeff=t.correction_coeff,
            # mu >= (1 - eps) pi, so pi / mu never exceeds 1 / (1 - eps): the clip only switches weighting on.
            importance_weight_clip=1.0 / (1.0 - t.exploration_floor) if t.exploration_floor > 0 else 0.0,
            normalize_advantages=t.normalize_advantages,
            advantage_scale=t.advantage_scale,
            entropy_floor=t.entropy_floor,
            weight_decay=t.weight_decay,
            grad_clip=t.grad_clip,
            rounds_per_iteration=t.rounds_per_iteration,
            minibatch_size=t.minibatch_size,
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=BaRPRLModule,
                model_config={
                    "preference_hidden": list(cfg.policy.preference_hidden),
                    "head_hidden": list(cfg.policy.head_hidden),
                    "head": cfg.policy.head,
                    "learned_baseline": t.baseline == "learned",
                    "critic": t.baseline == "critic",
                    "critic_form": t.critic_form,
                    "exploration_floor": t.exploration_floor,
                    "embedding_dropout": cfg.policy.embedding_dropout,
                    "hidden_dropout": cfg.policy.hidden_dropout,
                    "critic_dropout": cfg.policy.critic_dropout,
                    **({"members": cfg.policy.members, "member_data": cfg.policy.member_data} if cfg.policy.members > 1 else {}),
                    **({"critic_hidden": list(cfg.policy.critic_hidden)} if cfg.policy.critic_hidden else {}),
                    **({"conditioning": cfg.policy.conditioning} if cfg.policy.conditioning != "concat" else {}),
                    **({"model_prices": [c.blended_price for c in cards]} if cfg.policy.head in PRICE_HEADS else {}),
                    **({"model_costs": list(costs), "cost_scale": cfg.policy.cost_scale,
                        "quality_gate": cfg.policy.quality_gate} if cfg.policy.head == "cost_aware" else {}),
                    **({"reference_embedding": list(reference)} if shrinkable else {}),
                    **({"decision_shrinkage": cfg.policy.decision_shrinkage,
                        "decision_shrinkage_gate": cfg.policy.decision_shrinkage_gate} if cfg.policy.decision_shrinkage < 1.0 else {}),
                    **({"decision_cost_multiplier": cfg.policy.decision_cost_multiplier}
                       if cfg.policy.decision_cost_multiplier != 1.0 else {}),
                    **({"model_cards": [c.as_dict() for c in cards], "model_id_dim": cfg.policy.model_id_dim,
                        "model_id_dropout": cfg.policy.model_id_dropout} if cfg.policy.head == "model_conditioned" else {}),
                },
            )
        )
        .debugging(seed=t.seed, log_level="WARN")
        .reporting(metrics_num_episodes_for_smoothing=1)
    )


def warm_start(algo, source: str) -> None:
    """Start from another checkpoint's weights. Models are matched by name: a model the source
    never trained on starts from its "unknown" vector (model_conditioned head), so the first
    rollouts route exactly as the source would zero-shot. A training-only head the source lacks
    keeps its fresh initialisation; any other tensor that does not fit is refused."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    from barp_ray.policy import CheckpointError, RoutingPolicy

    try:
        src = RoutingPolicy.load(source).module
    except CheckpointError as e:
        raise ConfigError(f"training.init_from: {e}") from None
    mine = algo.get_module()
    training_only = tuple(f"{name}." for name in mine.get_non_inference_attributes())
    target = algo.learner_group.get_weights()[DEFAULT_MODULE_ID]
    theirs = {k: v.detach().cpu().numpy() for k, v in src.state_dict().items()}
    merged = {}
    for key, value in target.items():
        t = theirs.get(key)
        if key == "model_id.weight" and t is not None and t.shape[1:] == np.shape(value)[1:]:
            unknown = t[-1]
            rows = [t[src.trained_index[name]] if name in src.trained_index else unknown for name in mine.trained_index]
            merged[key] = np.stack([*rows, unknown])
        elif t is not None and t.shape == np.shape(value):
            merged[key] = t
        elif t is None and key.startswith(training_only):
            merged[key] = value
        else:
            what = "missing" if t is None else f"{t.shape} there, {np.shape(value)} here"
            raise ConfigError(f"training.init_from: {source}: its weights do not fit this policy ({key}: {what}; "
                              "same policy.head, conditioning and sizes needed)")
    algo.learner_group.set_weights({DEFAULT_MODULE_ID: merged})
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)


def ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        # Under `ray job submit` RAY_ADDRESS points at the cluster; locally this starts one.
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=True,
            logging_level="WARNING",
        )


def train(cfg: TrainConfig, progress: bool = True, out=sys.stdout) -> TrainResult:
    import ray
    from tqdm import tqdm

    from barp_ray.data.prepare import prepare
    from barp_ray.model_cards import FEATURES
    from barp_ray.policy import META_FILE
    from barp_ray.scoring import greedy_actions, reference_points, score_actions
    from barp_ray.training.curves import CURVE_PREFERENCES, CurveWriter
    from envs.routing_env import BanditData, prompt_weights

    start = time.time()
    data = prepare(cfg, progress=progress)
    print(
        f"data: {cfg.data.source} train={data.train.n} test={data.test.n} models={data.train.k} "
        f"tau=${data.tau:.6g}  cost: {data.train.cost_note}",
        file=out,
        flush=True,
    )
    ensure_ray()
    t = cfg.training
    fit_rows = np.arange(data.train.n)
    stopping = None
    if t.validation_fraction > 0:
        from barp_ray.training.early_stopping import EarlyStopping, split_prompts

        try:
            fit_rows, held_out = split_prompts(data.train.n, t.validation_fraction, t.seed)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        stopping = EarlyStopping(data.train.subset(held_out), data.train_embeddings[held_out], data.tau)
        print(f"early stopping: {len(held_out)} train prompts held out of the bandit rounds", file=out, flush=True)
    data_ref = ray.put(BanditData(data.train_embeddings[fit_rows], data.train.scores[fit_rows], data.train.costs[fit_rows],
                                  data.train.models, prompt_weights(data.train.tasks[fit_rows], cfg.env.prompt_sampling)))
    algo = build_algo_config(cfg, data_ref, data.tau, cards=model_cards(cfg, data.train),
                             costs=mean_normalized_costs(data.train, data.tau) if cfg.policy.head == "cost_aware" else None,
                             reference=data.train_embeddings[fit_rows].mean(axis=0).tolist()).build_algo()
    if cfg.training.init_from:
        warm_start(algo, cfg.training.init_from)
    w_eval = tuple(cfg.env.eval_preference)
    module = algo.get_module()

    def test_reward(w=w_eval) -> float:
        return score_actions(data.test, greedy_actions(module, data.test_embeddings, w), w, data.tau).reward

    from barp_ray.storage import is_uri, upload_dir

    target = cfg.output.checkpoint_dir
    staging = tempfile.TemporaryDirectory(prefix="barp-ckpt-") if is_uri(target) else None
    ckpt = Path(staging.name) if staging else Path(target).resolve()  # a URI: written here, uploaded whole at the end
    curves = CurveWriter(ckpt)
    averaging = None
    if t.average_from < 1.0:
        from barp_ray.training.weight_averaging import TailAverage

        averaging = TailAverage(t.iterations, t.average_from)
    history: list[dict] = []
    bar = tqdm(range(cfg.training.iterations), desc="training", unit="it", disable=not progress, file=sys.stderr, mininterval=1.0)
    try:
        for it in bar:
            res = algo.train()
            runner, learner = res["env_runners"], res["learners"]["default_policy"]
            row = {
                "iteration": it + 1,
                "rounds": int(res.get("num_env_steps_sampled_lifetime", runner.get("num_env_steps_sampled_lifetime", 0))),
                "train_reward": float(runner["episode_return_mean"]),
                "entropy": float(learner["entropy"]),
                "policy_loss": float(learner["policy_loss"]),
                "baseline_loss": float(learner["baseline_loss"]),
            }
            if (it + 1) % cfg.output.log_every == 0 or it + 1 == cfg.training.iterations:
                module = algo.get_module()
                row["test_reward"] = test_reward()
                row["heldout_reward"] = {w_q: test_reward((w_q, 1.0 - w_q)) for w_q in CURVE_PREFERENCES}
                tqdm.write(
                    f"iter {it + 1:4d}  rounds {row['rounds']:>9d}  train_reward {row['train_reward']:+.4f}  "
                    f"entropy {row['entropy']:.3f}  test_reward@w={list(w_eval)} {row['test_reward']:+.4f}",
                    file=out,
                )
            if stopping and ((it + 1) % t.validate_every == 0 or it + 1 == t.iterations):
                row["validation_sweep_reward"] = stopping.observe(it + 1, algo.get_module(), algo.learner_group.get_weights)
            if averaging and averaging.wants(it + 1):
                averaging.observe(algo.learner_group.get_weights())
            bar.set_postfix(reward=f"{row['train_reward']:+.3f}", entropy=f"{row['entropy']:.2f}")
            history.append(row)
            curves.iteration(row)

        # The weights the checkpoint keeps, when not the last iterate (the config allows one of the two).
        kept = None
        if stopping and stopping.best_iteration != t.iterations:
            kept = stopping.best_weights
        if averaging:
            kept = averaging.weights(algo.learner_group.get_weights())
            print(f"weight averaging: the mean of iterations {averaging.start}..{t.iterations} "
                  f"({averaging.count} snapshots)", file=out, flush=True)
        if kept is not None:
            algo.learner_group.set_weights(kept)
            algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)
        if stopping:
            print(f"early stopping: kept iteration {stopping.best_iteration} (held-out sweep reward "
                  f"{stopping.best_reward:+.4f})", file=out, flush=True)
        ckpt.mkdir(parents=True, exist_ok=True)
        algo.save_to_path(str(ckpt))
    finally:
        curves.close()
        bar.close()
        module = algo.get_module()
        algo.stop()

    final = score_actions(data.test, greedy_actions(module, data.test_embeddings, w_eval), w_eval, data.tau)
    evaluation = {
        "preference": list(w_eval),
        "barp": final.as_dict(),
        **{k: v.as_dict() for k, v in reference_points(data.train, data.test, w_eval, data.tau).items()},
    }
    meta = {
        "format": 1,
        "models": list(data.train.models),
        "prices": {m: vars(p) for m, p in data.train.prices.items()},
        "sizes": dict(data.train.sizes),
        **({"model_features": list(FEATURES)} if cfg.policy.head == "model_conditioned" else {}),
        "tau": data.tau,
        "encoder": cfg.encoder.model,
        "text_stats": list(TEXT_STATS) if cfg.encoder.text_stats else [],
        "embedding_dim": int(data.train_embeddings.shape[1]),
        "cost_note": data.train.cost_note,
        "config": cfg.to_dict(),
        "evaluation": evaluation,
        "history": history,
        **({"weight_averaging": {"from_iteration": averaging.start, "snapshots": averaging.count}} if averaging else {}),
        **({"early_stopping": {"held_out_prompts": int(stopping.table.n), "kept_iteration": stopping.best_iteration,
                               "held_out_sweep_reward": stopping.best_reward}} if stopping else {}),
    }
    (ckpt / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
    if staging:
        upload_dir(ckpt, target)
        staging.cleanup()
    where = target if staging else str(ckpt)
    seconds = time.time() - start
    print(f"\ntest split, greedy routing at w={list(w_eval)} (reward / quality / $ per query):", file=out)
    for name, s in evaluation.items():
        if isinstance(s, dict):
            print(f"  {name:<40s} {s['reward']:+.4f}  {s['quality']:.4f}  ${s['cost']:.6f}", file=out)
    print(f"checkpoint: {where}  ({seconds:.0f}s)", file=out, flush=True)
    return TrainResult(checkpoint=where, history=history, evaluation=evaluation, seconds=seconds, module=module, data=data)
