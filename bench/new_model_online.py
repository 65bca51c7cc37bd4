"""A new model appears in a live service: how many feedback rounds until it is adopted, at what cost?

    python bench/new_model_online.py [--warm 1500] [--rounds 3000] [--seed 0] [--out docs/results/new_model]

A model-conditioned checkpoint (trained on the synthetic world; trained here if missing) is served
with the shipped `configs/serve.yaml` settings (continuous training and exploration on), in
process, deployed from a declarative config as `serve deploy` does. Simulated users
(`barp_ray.data.shifting_world`: topics the policy never saw, one hidden expert per topic,
Bernoulli scores, real prices) route at w = (0.9, 0.1) and send feedback. After `--warm` rounds
the operator adds `newcomer` to the deployments' `user_config` (in place, no restart): it scores
as well as the expert on one topic, the one whose expert is dearest, is weak elsewhere, and costs
less than any model served so far, so it is that topic's best model. Every `--eval-every` rounds
the service's greedy choice is read on a fixed evaluation set: the newcomer's share of that
topic's greedy traffic, and the expected reward. Reports the rounds until the share reaches
`--target` (80 %), and what exploring it cost: the routes it got on the topics where it is not the
best and the expected reward they lost against the best model offered before it appeared.
Writes `<out>/new_model_online.json` and `.png` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from serve.ray_env import serve_as_shipped  # noqa: E402

serve_as_shipped()  # Ray, started below, serves in the project's mode (HAProxy ingress)

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench.online_adapt import Http  # noqa: E402

NEW = "newcomer-8b"


def make_world(meta: dict, topics: list[str], seed: int):
    """The live world over the served models plus the newcomer, who is no topic's expert until placed."""
    from barp_ray.data.shifting_world import ShiftingWorld

    prices = {m: (p["input_per_mtok"], p["output_per_mtok"]) for m, p in meta["prices"].items()}
    cheapest = min(prices.values(), key=sum)
    prices[NEW] = (cheapest[0] / 2, cheapest[1] / 2)
    world = ShiftingWorld(models=[*meta["models"], NEW], prices=prices, topics=topics, seed=seed)
    new = len(world.models) - 1
    k_old = new
    world.experts = np.asarray([e if e != new else (i % k_old) for i, e in enumerate(world.experts)])
    topic = int(np.argmax([sum(prices[world.models[e]]) for e in world.experts]))  # the dearest expert's topic
    base = world.expected_scores

    def expected_scores(t: int) -> np.ndarray:
        s = base(t)
        if t == topic:
            s[new] = world.expert_score
        return s

    world.expected_scores = expected_scores
    return world, topic, new


def reward_table(world, prompts: list[str], topics: np.ndarray, w, tau: float) -> np.ndarray:
    """[n, K] expected reward of every model on each prompt."""
    from envs.reward import normalized_cost

    return np.asarray([[w[0] * world.expected_scores(int(t))[a] - w[1] * normalized_cost(world.cost(a, p), tau)
                        for a in range(len(world.models))] for p, t in zip(prompts, topics)])


def deploy(args: dict, models: dict | None, http_options: dict) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from serve.settings import LIVE_OFFER_DEPLOYMENTS

    names = LIVE_OFFER_DEPLOYMENTS[args.get("topology", "colocated")]
    live = [{"name": n, "user_config": {"models": models}} for n in names] if models is not None else []
    config = {"http_options": http_options, "applications": [{"name": "barp", "route_prefix": "/",
                                                              "import_path": "serve.app:app_builder",
                                                              "args": args, "deployments": live}]}
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


def run(opts) -> dict:
    import socket

    import ray
    from ray import serve

    from barp_ray.data.shifting_world import LiveUsers
    from barp_ray.policy import META_FILE

    ckpt = Path(opts.checkpoint).resolve()
    if not (ckpt / META_FILE).is_file():
        print(f"training a model-conditioned checkpoint into {ckpt} ...", flush=True)
        subprocess.run([sys.executable, "-m", "barp_ray.train", "--set", "policy.head=model_conditioned",
                        "--checkpoint-dir", str(ckpt), "--no-progress"], cwd=ROOT, check=True)
    meta = json.loads((ckpt / META_FILE).read_text())
    world, topic, new = make_world(meta, opts.topics, opts.seed)
    w = (opts.quality, 1.0 - opts.quality)
    eval_prompts, eval_topics = world.prompts(opts.eval_prompts, np.random.default_rng(10_000 + opts.seed))
    on_topic = eval_topics == topic
    stream = np.random.default_rng(20_000 + opts.seed)

    work = Path(tempfile.mkdtemp(prefix="barp-new-model-"))
    args = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    args.update(checkpoint=str(ckpt), log_dir=str(work / "log"), auth={"disabled": True})
    args["trainer"]["state_dir"] = str(work / "trainer")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http_options = {"host": "127.0.0.1", "port": port}
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    serve.start(http_options=http_options)
    http = Http(port, "unused")
    users = LiveUsers(http.post, world, preference=w)
    old_models = {m: dict(meta["prices"][m]) for m in meta["models"]}
    card = {"input_per_mtok": world.prices[NEW][0], "output_per_mtok": world.prices[NEW][1], "size_b": 8.0}
    windows, failures, t0 = [], 0, time.time()

    def wait_for(check, what: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not check():
            if time.time() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(1.0)

    def offered() -> list[str]:
        st, body = http.get("/v1/models")
        return [m["id"] for m in body["models"] if m["id"] != "barp-auto"] if st == 200 else []

    def evaluate(phase: str, rounds: int, served: list[dict]) -> dict:
        choices, versions = users.greedy_choices(eval_prompts)
        rewards = reward_table(world, eval_prompts, eval_topics, w, meta["tau"])
        row = {"phase": phase, "rounds": rounds, "greedy_reward": float(rewards[np.arange(len(choices)), choices].mean()),
               "new_share_on_topic": float((choices[on_topic] == new).mean()),
               "new_share_elsewhere": float((choices[~on_topic] == new).mean()),
               "versions": sorted(versions), "elapsed_s": time.time() - t0}
        if served:
            row.update(served_reward=float(np.mean([s["reward"] for s in served])),
                       new_routes_on_topic=sum(s["new"] and s["on_topic"] for s in served),
                       new_routes_elsewhere=sum(s["new"] and not s["on_topic"] for s in served),
                       exploration_loss=float(sum(s["loss"] for s in served if s["new"] and not s["on_topic"])))
        print(f"{phase:7s} rounds {rounds:5d}  greedy reward {row['greedy_reward']:+.3f}  newcomer share on its topic "
              f"{row['new_share_on_topic']:.0%} elsewhere {row['new_share_elsewhere']:.0%}  "
              f"versions {row['versions'][-1:]}  [{row['elapsed_s']:.0f}s]", flush=True)
        return row

    try:
        deploy(args, None, http_options)
        wait_for(lambda: offered() == list(meta["models"]), "the service")
        for phase, total in (("before", opts.warm), ("after", opts.rounds)):
            if phase == "after":
                deploy(args, {**old_models, NEW: card}, http_options)
                wait_for(lambda: NEW in offered(), "the newcomer")
                time.sleep(2.0)
            windows.append(evaluate(phase, 0, []))
            done = 0
            while done < total:
                n = min(opts.eval_every, total - done)
                prompts, topics = world.prompts(n, stream)
                out = users.play(prompts, topics, clients=opts.clients)
                rewards = reward_table(world, prompts, topics, w, meta["tau"])
                best_old = rewards[:, :new].max(1)
                served = []
                for o, r, b, t in zip(out, rewards, best_old, topics):
                    if not o["ok"]:
                        failures += 1
                        continue
                    served.append({"reward": float(r[o["action"]]), "new": o["action"] == new, "on_topic": int(t) == topic,
                                   "loss": float(b - r[o["action"]])})
                done += n
                windows.append(evaluate(phase, done, served))
        _, stats = http.get("/v1/stats")
    finally:
        serve.shutdown()
        ray.shutdown()
    rewards = reward_table(world, eval_prompts, eval_topics, w, meta["tau"])
    res = {"settings": {k: v for k, v in vars(opts).items() if k != "out"}, "newcomer": {"name": NEW, **card},
           "topic": opts.topics[topic], "topic_expert_before": world.models[world.experts[topic]],
           "preference": list(w), "tau": meta["tau"],
           "oracle_reward_before": float(rewards[:, :new].max(1).mean()), "oracle_reward_after": float(rewards.max(1).mean()),
           "windows": windows, "failed_rounds": failures, "seconds": time.time() - t0,
           "trainer": (stats or {}).get("trainer")}
    return {**res, **summary(res)}


def summary(res: dict) -> dict:
    """Adoption figures from the evaluation windows after the newcomer was offered."""
    target = res["settings"]["target"]
    after = [x for x in res["windows"] if x["phase"] == "after"]
    late = [x for x in after if x["rounds"] > 2 * res["settings"]["rounds"] // 3]
    return {
        "rounds_to_target": next((x["rounds"] for x in after if x["rounds"] > 0 and x["new_share_on_topic"] >= target), None),
        "windows_at_target": f"{sum(x['new_share_on_topic'] >= target for x in after[1:])}/{len(after) - 1}",
        "share_on_topic_last_third": float(np.mean([x["new_share_on_topic"] for x in late])),
        "share_on_topic_at_offer": after[0]["new_share_on_topic"],
        "new_routes_elsewhere": int(sum(x.get("new_routes_elsewhere", 0) for x in after)),
        "new_routes_on_topic": int(sum(x.get("new_routes_on_topic", 0) for x in after)),
        "exploration_loss": float(sum(x.get("exploration_loss", 0.0) for x in after)),
    }


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warm = res["settings"]["warm"]
    xs = [(x["rounds"] + (warm if x["phase"] == "after" else 0)) for x in res["windows"]]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(xs, [x["new_share_on_topic"] for x in res["windows"]], "o-", label=f"newcomer's share of {res['topic']} (greedy)")
    ax[0].plot(xs, [x["new_share_elsewhere"] for x in res["windows"]], "s--", label="its share elsewhere")
    ax[0].axhline(res["settings"]["target"], color="green", alpha=0.4, label="target")
    ax[1].plot(xs, [x["greedy_reward"] for x in res["windows"]], "o-", label="greedy reward (eval set)")
    ax[1].axhline(res["oracle_reward_before"], ls=":", color="grey", label="oracle before")
    ax[1].axhline(res["oracle_reward_after"], ls="--", color="black", label="oracle with the newcomer")
    for a in ax:
        a.axvline(warm, color="red", alpha=0.5, label="newcomer offered")
        a.set_xlabel("feedback rounds")
        a.legend(fontsize=7)
    ax[0].set_ylabel("share")
    ax[1].set_ylabel("expected reward")
    fig.suptitle(f"A new model in a live service (w = ({res['preference'][0]:g}, {res['preference'][1]:.2g}), seed {res['settings']['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "barp-default-mc"))
    p.add_argument("--warm", type=int, default=1500, help="feedback rounds before the newcomer is offered")
    p.add_argument("--rounds", type=int, default=3000, help="feedback rounds after")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-prompts", type=int, default=160)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--quality", type=float, default=0.9, help="users' w_q (w_c = 1 - w_q)")
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--topics", nargs="+", default=["sql", "poetry", "law", "chemistry"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "new_model"))
    p.add_argument("--render", metavar="JSON", help="recompute the summary and figure of a saved run, run nothing")
    opts = p.parse_args()
    if opts.render:
        res = json.loads(Path(opts.render).read_text())
        res.update(summary(res))
        out = Path(opts.render).parent
    else:
        res = run(opts)
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
    (out / "new_model_online.json").write_text(json.dumps(res, indent=1))
    plot(res, out / "new_model_online.png")
    print(f"\nnewcomer {NEW} on topic {res['topic']} (expert before: {res['topic_expert_before']}); share of that "
          f"topic's greedy traffic: {res['share_on_topic_at_offer']:.0%} when offered, first >= {res['settings']['target']:.0%} "
          f"after {res['rounds_to_target'] or 'never'} rounds, at target in {res['windows_at_target']} windows, "
          f"{res['share_on_topic_last_third']:.0%} on average over the last third")
    print(f"exploring it: {res['new_routes_elsewhere']} routes on other topics, expected reward lost "
          f"{res['exploration_loss']:.1f} in total; {res['new_routes_on_topic']} routes on its topic; "
          f"failed rounds {res['failed_rounds']}; {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
