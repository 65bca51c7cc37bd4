"""One evaluation run: per seed, train (or load) BaRP, fit every baseline on the same split, score all of them at every preference.

Data flows one way: the config's split (`barp_ray.data.prepare`) -> routers trained on the train
split only (BaRP and the bandit baselines through the environment, the offline routers on the
labelled table) -> choice matrices on the test prompts -> operating points. Derived figures
(AIQ, call-performance, relative improvements) are computed from these raw points in
`barp_ray.evaluation.results`, so the JSON always holds what they were computed from.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from barp_ray.config import ConfigError, TrainConfig, apply_overrides, with_head
from barp_ray.evaluation.baselines import (
    BARP,
    BestLabelRouter,
    EpsilonGreedy,
    KNNRouter,
    LinearThompson,
    LinUCB,
    MLPSettings,
    Oracle,
    Router,
    ScoreMLPRouter,
    SingleModel,
    TrainView,
    UniformRandom,
    train_bandit,
)
from barp_ray.evaluation.baselines.base import FULL_INFO, SINGLE, argmax_choice
from barp_ray.evaluation.config import EvalConfig
from barp_ray.evaluation.metrics import operating_point, per_task, prompt_rewards
from barp_ray.evaluation.significance import best_single_per_preference, compare_to_barp, single_per_preference
from barp_ray.policy import CheckpointError, RoutingPolicy
from barp_ray.scoring import best_single_model
from envs.preference import PreferenceSampler, check_simplex

RESULTS_FORMAT = 1
BEST_SINGLE = "best single model"
# The single model a deployment could commit to without the test outcomes: best mean reward on the
# train prompts at that preference; the test-picked one is a bar no deployment could have chosen.
BEST_SINGLE_ON_TRAIN = "best single model (chosen on train)"


class PolicyRouter(Router):
    """BaRP: one trained policy, routed greedily (argmax of pi(a | x, w)) at whatever w is asked."""

    name = "BaRP"
    family = BARP

    def __init__(self, policy: RoutingPolicy, name: str = "BaRP"):
        self.policy, self.name = policy, name

    def choose(self, embeddings, preference):
        return argmax_choice(self.policy.probabilities(embeddings, np.asarray(preference, dtype=np.float32)))


def head_label(head: str) -> str:
    """The results' name for BaRP trained with another `policy.head` (`eval.compare_heads`)."""
    return f"BaRP ({head})"


def preference_grid(points: int, default) -> list[tuple[float, float]]:
    """w_q evenly spaced over [0, 1] (rounded to 6 places), plus the default preference if it is off the grid."""
    wq = set(np.round(np.linspace(0.0, 1.0, points), 6).tolist())
    wq.add(round(float(default[0]), 6))
    return [(q, round(1.0 - q, 6)) for q in sorted(wq)]


def default_preference(train_cfg: TrainConfig, eval_cfg: EvalConfig) -> tuple[float, float]:
    w = eval_cfg.default_preference if eval_cfg.default_preference is not None else train_cfg.env.eval_preference
    wq, _ = check_simplex(w, "eval.default_preference")
    return (round(wq, 6), round(1.0 - wq, 6))


def bandit_rounds(train_cfg: TrainConfig, eval_cfg: EvalConfig) -> int:
    if eval_cfg.bandit_rounds == "same":
        return train_cfg.training.iterations * train_cfg.training.rounds_per_iteration
    return int(eval_cfg.bandit_rounds)


def largest_model(table, choice: str) -> tuple[int, str]:
    """Index of 'the largest model' and the rule that picked it (most parameters if known, else priciest)."""
    models = list(table.models)
    if choice != "auto":
        if choice not in models:
            raise ConfigError(f"eval.largest_model: {choice!r} is not one of the models {models}")
        return models.index(choice), "named in eval.largest_model"
    mean_cost = table.costs.mean(axis=0)
    sizes = table.sizes if set(table.sizes) >= set(models) else {}
    if sizes:
        top = max(sizes.values())
        tied = [i for i, m in enumerate(models) if sizes.get(m) == top]
        i = max(tied, key=lambda j: mean_cost[j])
        return i, f"most parameters ({sizes[models[i]]:g}B, from the data's model sizes)"
    return int(np.argmax(mean_cost)), "priciest mean cost on train (no parameter counts in this data)"


def load_checkpoint_for(path: str, data, train_cfg: TrainConfig) -> RoutingPolicy:
    """Load a checkpoint and refuse one that was trained on other models, another tau, or another split."""
    policy = RoutingPolicy.load(path)
    if tuple(policy.models) != tuple(data.train.models):
        raise CheckpointError(f"{path}: trained on models {list(policy.models)}, the data has {list(data.train.models)}")
    trained = (policy.meta.get("config") or {}).get("data") or {}
    ours = split_identity(vars(train_cfg.data))
    theirs = split_identity({**vars(train_cfg.data), **trained})
    for key in ours:
        if ours[key] != theirs.get(key):
            raise CheckpointError(
                f"{path}: trained with data.{key}={theirs.get(key)!r}, evaluating with data.{key}={ours[key]!r} "
                "(its test prompts may have been training prompts)"
            )
    if not np.isclose(policy.tau, data.tau, rtol=1e-6):
        raise CheckpointError(f"{path}: trained with tau=${policy.tau:.6g}, the config gives tau=${data.tau:.6g}")
    return policy


def split_identity(data: dict) -> dict:
    """The data fields that decide which prompts are train and which are test."""
    keys = ["source", "split", "max_prompts"]
    if data.get("split") == "tasks":
        keys.append("held_out_tasks")
    if data.get("split") == "random":
        keys.append("test_fraction")
    if data.get("split") == "random" or data.get("max_prompts"):
        keys.append("seed")
    if data.get("source") == "synthetic":
        keys += ["synthetic_prompts", "synthetic_seed"]
    return {k: data.get(k) for k in keys}


def reference_routers(data) -> list[Router]:
    models = data.train.models
    return [UniformRandom(len(models)), *(SingleModel(models, i) for i in range(len(models))), Oracle(data.test.scores, data.test.costs, data.tau)]


def fit_offline(data, eval_cfg: EvalConfig, prefs, seed: int, progress: bool) -> list[Router]:
    view = TrainView.build(
        data.train_embeddings, data.train.scores, data.train.costs, data.tau, eval_cfg.validation_fraction, seed
    )
    settings = MLPSettings(
        hidden=eval_cfg.mlp_hidden, lr=eval_cfg.mlp_lr, max_epochs=eval_cfg.mlp_max_epochs, patience=eval_cfg.mlp_patience
    )
    knn = KNNRouter(eval_cfg.knn_k, dims=data.sentence_dim).fit(view, prefs)
    knn.name = "kNN"  # the chosen k varies by seed; it is recorded in the run's details
    return [
        knn,
        ScoreMLPRouter(settings).fit(view, seed=seed),
        BestLabelRouter(settings).fit(view, prefs, seed=seed, progress=progress),
    ]


def fit_bandits(data, train_cfg: TrainConfig, eval_cfg: EvalConfig, seed: int, progress: bool) -> list[Router]:
    """Each learner plays its own copy of the training env (same data, same preference sampler as BaRP)."""
    from envs.routing_env import BanditData, BanditRounds

    env_data = BanditData(data.train_embeddings, data.train.scores, data.train.costs, data.train.models)
    sampler = PreferenceSampler.from_dict(train_cfg.env.preference)
    rounds = bandit_rounds(train_cfg, eval_cfg)
    common = dict(dims=eval_cfg.bandit_dims, ridge=eval_cfg.bandit_ridge, seed=seed)
    k = data.train.k
    learners = [
        EpsilonGreedy(k, epsilon=eval_cfg.epsilon, **common),
        LinUCB(k, alpha=eval_cfg.ucb_alpha, **common),
        LinearThompson(k, scale=eval_cfg.thompson_scale, **common),
    ]
    for i, learner in enumerate(learners):
        env = BanditRounds(env_data, data.tau, sampler, seed=seed * 1000 + i)
        train_bandit(learner, env, rounds, eval_cfg.bandit_batch, progress=progress)
    return learners


def score_router(router: Router, data, prefs, default, unseen: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """Operating points at every preference, per-task figures and the unseen-prompt subset at the
    default w; and [preferences, prompts] of per-prompt rewards (for the paired comparison, not saved)."""
    test, tau, emb = data.test, data.tau, data.test_embeddings
    fixed = None if router.tracks_preference else router.choose(emb, default)
    points, rewards = [], []
    for w in prefs:
        choice = fixed if fixed is not None else router.choose(emb, w)
        points.append(operating_point(test.scores, test.costs, choice, w, tau).as_dict())
        rewards.append(prompt_rewards(test.scores, test.costs, choice, w, tau))
        if w == default:
            at_default = choice
    row = {"points": points, "per_task": per_task(test.scores, test.costs, test.tasks, at_default, default, tau)}
    if unseen is not None and unseen.any():
        row["unseen"] = operating_point(test.scores[unseen], test.costs[unseen], at_default[unseen], default, tau).as_dict()
    return row, np.stack(rewards)


def data_summary(train_cfg: TrainConfig, data, largest: tuple[int, str], unseen: np.ndarray) -> dict:
    test = data.test
    return {
        "source": train_cfg.data.source,
        "path": train_cfg.data.path,
        "split": train_cfg.data.split,
        "held_out_tasks": list(train_cfg.data.held_out_tasks),
        "train_prompts": int(data.train.n),
        "test_prompts": int(test.n),
        "test_prompts_also_in_train": int((~unseen).sum()),
        "train_tasks": data.train.task_names(),
        "test_tasks": {t: int((test.tasks == t).sum()) for t in test.task_names()},
        "models": list(test.models),
        "tau": float(data.tau),
        "cost_note": test.cost_note,
        "largest_model": test.models[largest[0]],
        "largest_model_rule": largest[1],
    }


def run_evaluation(
    train_cfg: TrainConfig,
    eval_cfg: EvalConfig,
    checkpoints: list[str] | None = None,
    name: str = "eval",
    progress: bool = True,
    out=sys.stdout,
) -> dict:
    """Raw results (see `barp_ray.evaluation.results` for what is derived from them). Trains BaRP unless checkpoints are given."""
    from tqdm import tqdm

    from barp_ray.data.prepare import prepare

    start = time.time()
    default = default_preference(train_cfg, eval_cfg)
    prefs = preference_grid(eval_cfg.sweep_points, default)
    seeds = list(range(len(checkpoints) if checkpoints else eval_cfg.seeds))
    data = prepare(train_cfg, progress=progress)
    largest = largest_model(data.train, eval_cfg.largest_model)
    seen = set(data.train.prompts.tolist())
    unseen = np.asarray([p not in seen for p in data.test.prompts.tolist()])
    policies = [load_checkpoint_for(c, data, train_cfg) for c in checkpoints or []]  # fail fast, before any training
    print(
        f"eval {name}: {train_cfg.data.source} split={train_cfg.data.split} train={data.train.n} test={data.test.n} "
        f"models={data.train.k} tau=${data.tau:.6g} seeds={len(seeds)} preferences={len(prefs)}",
        file=out,
        flush=True,
    )

    routers_out: dict[str, dict] = {}
    per_prompt: dict[str, list[np.ndarray]] = {}
    for seed in tqdm(seeds, desc="seeds", unit="seed", disable=not progress, file=sys.stderr):
        t0 = time.time()
        if checkpoints:
            policy, ckpt = policies[seed], str(Path(checkpoints[seed]).resolve())
        else:
            policy, ckpt = _train_barp(train_cfg, eval_cfg, name, seed, progress, out)
        routers = [PolicyRouter(policy), *reference_routers(data)]
        details = {"BaRP": {"checkpoint": ckpt}}
        for head in eval_cfg.compare_heads:  # the same training with another head, scored on the same split and seeds
            variant = with_head(train_cfg, head)
            other, other_ckpt = _train_barp(variant, eval_cfg, f"{name}/{head}", seed, progress, out)
            routers.append(PolicyRouter(other, name=head_label(head)))
            details[head_label(head)] = {"checkpoint": other_ckpt, "head": head}
        offline = fit_offline(data, eval_cfg, prefs, seed, progress)
        bandits = fit_bandits(data, train_cfg, eval_cfg, seed, progress)
        routers += offline + bandits
        details["kNN"] = {"k": offline[0].k, "validation_reward": offline[0].validation}
        for b in bandits:
            details[b.name] = {"rounds": b.rounds_seen, "features": b.features.size}
        for r in routers:
            entry = routers_out.setdefault(r.name, {"family": r.family, "tracks_preference": r.tracks_preference, "runs": []})
            row, rewards = score_router(r, data, prefs, default, unseen)
            per_prompt.setdefault(r.name, []).append(rewards)
            run = {"seed": seed, **row}
            if r.name in details:
                run["details"] = details[r.name]
            entry["runs"].append(run)
        barp_now = routers_out["BaRP"]["runs"][-1]["points"][prefs.index(default)]
        print(f"seed {seed}: BaRP reward@w={list(default)} {barp_now['reward']:+.4f}  ({time.time() - t0:.0f}s)", file=out, flush=True)

    return {
        "format": RESULTS_FORMAT,
        "name": name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.time() - start, 1),
        "data": data_summary(train_cfg, data, largest, unseen),
        "preferences": [list(w) for w in prefs],
        "default_preference": list(default),
        "seeds": seeds,
        "bandit_rounds": bandit_rounds(train_cfg, eval_cfg),
        "train_config": train_cfg.to_dict(),
        "eval_config": eval_cfg.to_dict(),
        "routers": routers_out,
        "best_single_on_train": (on_train := best_single_on_train(data, prefs)),
        "paired": paired_comparisons(per_prompt, routers_out, on_train),
    }


def best_single_on_train(data, prefs) -> list[str]:
    """Per preference, the model with the best mean reward over the train prompts."""
    return [data.train.models[best_single_model(data.train, w, data.tau)] for w in prefs]


def paired_comparisons(per_prompt: dict[str, list[np.ndarray]], routers: dict[str, dict], on_train: list[str]) -> dict[str, dict]:
    """BaRP minus each full-information router, minus the best single model at each preference (picked
    on the test prompts) and minus the one picked on train, with a paired bootstrap interval over the
    test prompts (`barp_ray.evaluation.significance`)."""
    stacked = {n: np.stack(v) for n, v in per_prompt.items()}
    singles = [n for n, e in routers.items() if e["family"] == SINGLE]
    stacked[BEST_SINGLE] = best_single_per_preference(stacked, singles)
    stacked[BEST_SINGLE_ON_TRAIN] = single_per_preference(stacked, on_train)
    return compare_to_barp(stacked, [n for n, e in routers.items() if e["family"] == FULL_INFO] + [BEST_SINGLE, BEST_SINGLE_ON_TRAIN])


def _train_barp(train_cfg: TrainConfig, eval_cfg: EvalConfig, name: str, seed: int, progress: bool, out):
    from barp_ray.training.run import train

    ckpt = Path(eval_cfg.checkpoint_root) / name / f"seed-{seed}"
    cfg = apply_overrides(train_cfg, [f"training.seed={seed}", f"output.checkpoint_dir={ckpt}"])
    result = train(cfg, progress=progress, out=out)
    return RoutingPolicy.load(result.checkpoint), result.checkpoint
