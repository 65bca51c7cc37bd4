"""In-process live loop: how steadily the continuous trainer learns, across seeds and update cadences.

    python bench/live_loop.py [--seeds 0 1 2 ...] [--cadences 16 100] [--rounds 1000] [--set rollout.estimator=snips]

The service's learning parts without HTTP or Serve: the same `FeedbackStore`, `ContinuousTrainer`
(RLlib LearnerGroup, safe-rollout gate) and exploring distribution as `serve/app.py`, settings from
configs/serve.yaml (`--set` overrides), routing from the trainer's latest published weights. The
world is `bench/online_adapt.py`'s: topics unlike the training world's, one hidden expert per topic,
Bernoulli scores, preference all-quality; after `--rounds` rounds every expert moves.

A cadence is how many rewards arrive between two trainer updates: 16 is an idle machine (the
trainer keeps up with `min_batch`), 100 or more a machine whose trainer is busy or starved of CPU.
The HTTP benchmark measures one cadence, whatever the machine gives; this one measures the spread
over seeds and cadences, which a single HTTP run cannot, in ~20 s per run.

Prints a table, writes <out>/<label>.json and .png (median curve and the seeds' range per cadence).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL = 0.7  # share of the uniform -> oracle gap
EVAL_EVERY = 100


def app_args(overrides: list[str]) -> dict:
    args = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        args.setdefault(section, {})[name] = yaml.safe_load(value)
    return args


class InProcessService:
    """The service's learning parts in one process, as `serve/app.py` wires them: a feedback store,
    the continuous trainer (updated only when asked, so a benchmark sets the cadence) and a
    router that draws from the exploring distribution of the latest published weights. Benchmarks
    that measure learning, not HTTP, drive it round by round.

    Which rewards the trainer holds back for its gate follows the request id (a hash), and ids are
    random: two runs of one setting then diverge from the first held-back record on. Here the
    held-back rounds are drawn from `seed` instead (ids are re-drawn until the hash agrees), so a
    run repeats exactly and two settings see the same rounds held back."""

    def __init__(self, checkpoint: str, overrides: list[str], seed: int, live_config: dict | None = None) -> None:
        import torch

        from barp_ray.policy import RoutingPolicy
        from serve.feedback_store import FeedbackStore
        from serve.settings import live_offer, settings_from_args
        from serve.trainer import ContinuousTrainer

        torch.manual_seed(seed)  # the live critic starts from a random init
        self.policy = RoutingPolicy.load(checkpoint)
        work = Path(tempfile.mkdtemp(prefix="live_loop_"))
        args = app_args(overrides)
        args.update(checkpoint=checkpoint, log_dir=str(work / "log"), auth={"disabled": True})
        args["trainer"] = {**args["trainer"], "state_dir": str(work / "trainer"), "max_wait_s": 1e9}
        self.settings = settings_from_args(args).absolute()
        self.store = FeedbackStore(self.settings.log_dir, tau=self.policy.tau)
        self.trainer = ContinuousTrainer(self.settings)
        self.served = self.policy.module
        if live_config is not None:  # as an operator sets it in Serve's user_config
            offer = live_offer(live_config, self.policy.meta)
            self.trainer.offer(offer)
            offer.apply(self.served)
        self.version = self.trainer.snapshot[0]
        self.holdout = np.random.default_rng([seed, 11])

    def _request_id(self) -> str:
        from serve.feedback_store import new_request_id
        from serve.trainer import held_back

        fraction = self.settings.rollout.holdout_fraction
        want = bool(self.holdout.random() < fraction)
        while held_back(rid := new_request_id(), fraction) != want:
            pass
        return rid

    def round(self, x: np.ndarray, w: np.ndarray, rng: np.random.Generator, outcome) -> tuple[int, dict]:
        """Route one request, log it, post outcome(a) -> (score, cost) as its feedback: (model, joined reward)."""
        import torch

        from serve.exploration import exploring_distribution
        from serve.feedback_store import encode_vector

        probs = self.served.action_probabilities(torch.from_numpy(x[None]), torch.from_numpy(w[None])).numpy()
        mu = exploring_distribution(probs, self.trainer.exploration_epsilon(), self.settings.exploration.temperature)[0]
        a = int(rng.choice(len(mu), p=mu / mu.sum()))
        rid = self._request_id()
        self.store.record_decision({"request_id": rid, "time": time.time(), "embedding": encode_vector(x),
                                    "preference": w.tolist(), "model": self.policy.models[a],
                                    "behaviour_prob": float(mu[a]), "mode": "explore", "policy_version": self.version})
        return a, self.store.record_feedback(rid, *outcome(a))

    def update(self) -> dict | None:
        """One trainer update if it has enough new feedback; replicas' weights follow a publication."""
        import torch

        from barp_ray.policy import load_policy_state

        row = self.trainer.train_once()
        v, weights = self.trainer.snapshot
        if v != self.version:
            load_policy_state(self.served, {k: torch.as_tensor(t) for k, t in weights.items()})
            self.version = v
        return row

    def close(self) -> None:
        self.trainer.close()
        self.store.close()


def one_run(checkpoint: str, embeddings: dict, seed: int, cadence: int, rounds: int, topics: list[str],
            overrides: list[str]) -> dict:
    import torch

    from barp_ray.data.shifting_world import ShiftingWorld

    service = InProcessService(checkpoint, overrides, seed)
    served, models = service.served, list(service.policy.models)
    prices = {m: (p["input_per_mtok"], p["output_per_mtok"]) for m, p in service.policy.meta["prices"].items()}
    world = ShiftingWorld(models=models, prices=prices, topics=topics, seed=seed)
    stream = np.random.default_rng([seed, 1])
    eval_prompts, eval_topics = world.prompts(200, np.random.default_rng([seed, 2]))
    eval_x = torch.from_numpy(np.stack([embeddings[p] for p in eval_prompts]))
    pref = np.asarray([1.0, 0.0], dtype=np.float32)

    def greedy_gap() -> float:
        probs = served.action_probabilities(eval_x, torch.from_numpy(np.tile(pref, (len(eval_x), 1)))).numpy()
        u, o = world.uniform_score(eval_topics), world.oracle_score(eval_topics)
        return (world.score_of(eval_topics, probs.argmax(1)) - u) / (o - u)

    phases, t0, updates, refused, streak, longest = {}, time.time(), 0, 0, 0, 0
    anchor_ended = None  # trainer.anchor_weight: when and why its pull ended (rounds from the start)
    for phase in ("new world", "after shift"):
        if phase == "after shift":
            world.shift()
        curve, served_scores, phase_forgets = [greedy_gap()], [], 0
        prompts, prompt_topics = world.prompts(rounds, stream)
        for i, (prompt, topic) in enumerate(zip(prompts, prompt_topics)):
            a, _ = service.round(embeddings[prompt], pref, stream, lambda a: world.outcome(topic, a, prompt))
            served_scores.append(float(world.expected_scores(topic)[a]))
            if (i + 1) % cadence == 0 and (row := service.update()) is not None:
                updates += 1
                refused += not row["published"]
                phase_forgets += row["forgot"]
                streak = 0 if row["published"] else streak + 1
                longest = max(longest, streak)
                if anchor_ended is None and service.trainer.anchor.ended not in (None, "off"):
                    anchor_ended = {"round": i + 1 + (rounds if phase == "after shift" else 0), "why": service.trainer.anchor.ended}
            if (i + 1) % EVAL_EVERY == 0:
                curve.append(greedy_gap())
        u = world.uniform_score(prompt_topics)
        o = world.oracle_score(prompt_topics)
        reached = next((EVAL_EVERY * j for j, c in enumerate(curve) if j and c >= GOAL), None)
        after = curve[reached // EVAL_EVERY:] if reached else []
        phases[phase] = {"curve": curve, "rounds_to_goal": reached, "mean_gap_closed": float(np.mean(curve[1:])),
                         "min_after_goal": float(min(after)) if after else None,
                         "served_gap_closed": (float(np.mean(served_scores)) - u) / (o - u), "forgets": phase_forgets}
    service.close()
    return {"seed": seed, "cadence": cadence, "phases": phases, "updates": updates, "refused": refused,
            "longest_refusal_streak": longest, "forgets": sum(p["forgets"] for p in phases.values()), "anchor_ended": anchor_ended,
            "seconds": time.time() - t0}


def _finite(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for cadence in sorted({r["cadence"] for r in runs}):
        rs = [r for r in runs if r["cadence"] == cadence]
        for phase in ("new world", "after shift"):
            ps = [r["phases"][phase] for r in rs]
            reach = [p["rounds_to_goal"] for p in ps]
            rows.append({
                "cadence": cadence, "phase": phase, "seeds": len(rs), "reached": sum(x is not None for x in reach),
                "rounds_to_goal_median": _finite(np.median([x if x is not None else np.inf for x in reach])),
                "rounds_to_goal_worst": _finite(max(x if x is not None else np.inf for x in reach)),
                "mean_gap_closed": float(np.mean([p["mean_gap_closed"] for p in ps])),
                "worst_after_goal": min((p["min_after_goal"] for p in ps if p["min_after_goal"] is not None), default=None),
                "served_gap_closed": float(np.mean([p["served_gap_closed"] for p in ps])),
                "refused_share": float(np.mean([r["refused"] / max(r["updates"], 1) for r in rs])),
                "forgets": float(np.mean([p.get("forgets", 0) for p in ps])),
                "longest_refusal_streak": max((r.get("longest_refusal_streak") for r in rs), default=None),
            })
    return rows


def table(rows: list[dict], rounds: int) -> str:
    def n(x):
        return "not reached" if x is None else f"{x:.0f}"

    out = [f"| rewards per update | phase | seeds at {GOAL:.0%} within {rounds} | rounds to {GOAL:.0%}: median / worst | "
           "greedy gap closed, mean over the phase | lowest after reaching it | served gap closed | candidates refused | "
           "longest refusal streak | replay forgets per seed |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        worst = "-" if r["worst_after_goal"] is None else f"{r['worst_after_goal']:.2f}"
        out.append(f"| {r['cadence']} | {r['phase']} | {r['reached']}/{r['seeds']} | {n(r['rounds_to_goal_median'])} / "
                   f"{n(r['rounds_to_goal_worst'])} | {r['mean_gap_closed']:.2f} | {worst} | {r['served_gap_closed']:.2f} | "
                   f"{r['refused_share']:.0%} | {n(r.get('longest_refusal_streak'))} | "
                   f"{r.get('forgets', 0):.2f} |")
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = result["settings"]["rounds"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, cadence in enumerate(sorted({r["cadence"] for r in result["runs"]})):
        rs = [r for r in result["runs"] if r["cadence"] == cadence]
        for j, phase in enumerate(("new world", "after shift")):
            curves = np.asarray([r["phases"][phase]["curve"] for r in rs])
            x = j * rounds + EVAL_EVERY * np.arange(curves.shape[1])
            ax.plot(x, np.median(curves, 0), "o-", ms=3, color=f"C{i}",
                    label=f"{cadence} rewards per update: median of {len(rs)} seeds" if not j else None)
            ax.fill_between(x, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.15)
    ax.axhline(0, color="grey", ls="--", label="uniform")
    ax.axhline(1, color="black", ls=":", label="oracle")
    ax.axhline(GOAL, color="green", alpha=0.4, label=f"{GOAL:.0%} of the gap")
    ax.axvline(rounds, color="red", alpha=0.5, label="experts shift")
    ax.set_xlabel("feedback rounds")
    ax.set_ylabel("greedy routing: share of the uniform -> oracle gap closed")
    ax.set_title(f"in-process live loop ({result['label']}); band = range over seeds")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "barp-default"))
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--cadences", type=int, nargs="+", default=[16, 100])
    p.add_argument("--rounds", type=int, default=1000, help="feedback rounds before and again after the shift")
    p.add_argument("--topics", nargs="+", default=["sql", "poetry", "law", "chemistry"])
    p.add_argument("--set", action="append", default=[], help="app args override, e.g. rollout.estimator=snips")
    p.add_argument("--label", default="shipped", help="name of the result files")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "live_loop"))
    p.add_argument("--render", metavar="JSON", help="redraw the table and figure of a saved run, run nothing")
    args = p.parse_args()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        plot(result, Path(args.render).with_suffix(".png"))
        print(table(result["summary"], result["settings"]["rounds"]))
        return
    from barp_ray.data.shifting_world import ShiftingWorld
    from barp_ray.policy import CheckpointError, RoutingPolicy

    try:
        policy = RoutingPolicy.load(args.checkpoint)
    except CheckpointError as e:
        sys.exit(f"error: checkpoint: {e} (train one first: python -m barp_ray.train)")
    texts = ShiftingWorld(models=list(policy.models), prices={}, topics=args.topics).all_prompts()
    embeddings = dict(zip(texts, policy.observe(texts)))
    runs = []
    for cadence in args.cadences:
        for seed in args.seeds:
            r = one_run(args.checkpoint, embeddings, seed, cadence, args.rounds, args.topics, args.set)
            runs.append(r)
            print(f"rewards/update {cadence:4d} seed {seed}: " + "  ".join(
                f"{ph}: {' '.join(f'{c:+.2f}' for c in v['curve'])}" for ph, v in r["phases"].items())
                + f"  [{r['seconds']:.0f}s, {r['refused']}/{r['updates']} refused, {r.get('forgets', 0)} forgets"
                + (f", anchor ended at {r['anchor_ended']['round']} ({r['anchor_ended']['why']})" if r.get('anchor_ended') else "")
                + "]", flush=True)
    summary = summarize(runs)
    result = {"label": args.label, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "render")},
              "goal_gap_closed": GOAL, "summary": summary, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.label}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{args.label}.png")
    print(table(summary, args.rounds))
    print(f"wrote {out / args.label}.json/.png")


if __name__ == "__main__":
    main()
