"""Online adaptation over HTTP: does the served router learn a world it never saw, and re-learn it after a shift?

    python bench/online_adapt.py [--epsilon 0.1] [--rounds 3000] [--seed 0] [--out docs/results/online_adapt]

`serve run` of the shipped configs/serve.yaml (paths moved to a scratch directory, port free,
`--epsilon` / `--set` applied), then simulated users (`barp_ray.data.shifting_world`): topics and
templates unlike the training world's, one hidden expert model per topic (score 0.9, the others
0.1-0.45), Bernoulli scores, real costs, preference all-quality. Every `--eval-every` feedback
rounds the load pauses and the service's greedy choice (`mode: greedy`) is scored on a fixed
evaluation set by its expected score. After `--rounds` rounds every topic's expert moves to
another model, and `--rounds` more follow, with no restart. In the same run a LinUCB on the
MiniLM embedding plays the same prompt stream against the same world, so the figure says
whether the neural policy adapts as fast as a linear bandit. Writes results.json and
learning_curve.png under --out and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from serve.ray_env import serve_as_shipped  # noqa: E402

serve_as_shipped()  # Ray, started below, serves in the project's mode (HAProxy ingress)

GOAL = 0.7  # share of the uniform -> oracle gap to close within --rounds, before and after the shift


def _json(raw: bytes):
    try:
        return json.loads(raw or b"null")
    except ValueError:  # e.g. the proxy's plain-text answer while the app is still starting
        return {"error": raw.decode("utf-8", "replace")}


class Http:
    def __init__(self, port: int, token: str):
        self.base, self.token = f"http://127.0.0.1:{port}", token

    def call(self, method: str, path: str, body=None):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json", "authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, _json(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            return 599, {"error": type(e).__name__}

    def post(self, path, body):
        return self.call("POST", path, body)

    def get(self, path):
        return self.call("GET", path)


def start_service(work: Path, checkpoint: Path, epsilon: float, overrides: list[str]) -> tuple[subprocess.Popen, Http]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    cfg["http_options"]["port"] = port
    args = cfg["applications"][0]["args"]
    args["checkpoint"] = str(checkpoint)
    args["log_dir"] = str(work / "log")
    args["trainer"]["state_dir"] = str(work / "trainer")
    args["exploration"]["epsilon"] = epsilon
    for item in overrides:  # section.field=value on the app's args
        key, value = item.split("=", 1)
        section, field = key.split(".", 1) if "." in key else (None, key)
        (args[section] if section else args)[field] = yaml.safe_load(value)
    (work / "serve.yaml").write_text(yaml.safe_dump(cfg))
    token = os.urandom(16).hex()
    env = {**os.environ, "BARP_API_TOKEN": token, "PYTHONPATH": str(ROOT)}
    log = open(work / "serve_run.log", "w")
    proc = subprocess.Popen(["serve", "run", str(work / "serve.yaml")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    http = Http(port, token)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve run exited ({proc.returncode}); see {work / 'serve_run.log'}")
        if http.get("/healthz")[0] == 200 and http.get("/v1/stats")[0] == 200:
            return proc, http
        time.sleep(1.0)
    stop_service(proc)
    raise RuntimeError(f"service did not come up in 300 s; see {work / 'serve_run.log'}")


def stop_service(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["ray", "stop", "--force"], capture_output=True)


class LinUCBPlayer:
    """LinUCB on the MiniLM embedding, fed the same prompts and the same world as the service."""

    def __init__(self, world, embeddings: dict[str, np.ndarray], seed: int, batch: int = 32):
        from barp_ray.evaluation.baselines.bandits import LinUCB

        self.world, self.emb, self.batch = world, embeddings, batch
        self.learner = LinUCB(len(world.models), dims=32, alpha=0.5, seed=seed)
        self.learner.start(np.stack(list(embeddings.values())))  # PCA of the world's prompts, no labels

    def play(self, prompts: list[str], topics: np.ndarray) -> list[float]:
        expected = []
        pref = np.asarray([[1.0, 0.0]])
        for i in range(0, len(prompts), self.batch):
            p, t = prompts[i:i + self.batch], topics[i:i + self.batch]
            phi = self.learner.features(np.stack([self.emb[x] for x in p]), pref)
            actions = self.learner.explore(phi)
            rewards = np.asarray([self.world.outcome(int(tt), int(a), x)[0] for x, tt, a in zip(p, t, actions)])
            expected += [float(self.world.expected_scores(int(tt))[a]) for tt, a in zip(t, actions)]
            self.learner.observe(phi, actions, rewards)
        return expected

    def greedy(self, prompts: list[str]) -> np.ndarray:
        one_hot = self.learner.choose(np.stack([self.emb[x] for x in prompts]), np.asarray([[1.0, 0.0]]))
        return np.asarray(one_hot).argmax(axis=1)


def run(args) -> dict:
    from barp_ray.data.shifting_world import LiveUsers, ShiftingWorld
    from barp_ray.encoder import encode
    from barp_ray.policy import META_FILE

    checkpoint = Path(args.checkpoint).resolve()
    if not (checkpoint / META_FILE).is_file():
        print(f"training the default checkpoint into {checkpoint} ...", flush=True)
        subprocess.run([sys.executable, "-m", "barp_ray.train", "--checkpoint-dir", str(checkpoint)], cwd=ROOT, check=True)
    meta = json.loads((checkpoint / META_FILE).read_text())
    prices = {m: (p["input_per_mtok"], p["output_per_mtok"]) for m, p in meta["prices"].items()}
    world = ShiftingWorld(models=list(meta["models"]), prices=prices, topics=args.topics, seed=args.seed)
    sim_world = ShiftingWorld(models=list(meta["models"]), prices=prices, topics=args.topics, seed=args.seed)  # LinUCB's copy
    texts = sorted({t for ts in world._texts.values() for t in ts})
    embeddings = dict(zip(texts, encode(texts, meta["encoder"])))
    eval_rng = np.random.default_rng(10_000 + args.seed)
    eval_prompts, eval_topics = world.prompts(args.eval_prompts, eval_rng)
    stream_rng = np.random.default_rng(20_000 + args.seed)

    work = Path(tempfile.mkdtemp(prefix="barp-online-"))
    proc, http = start_service(work, checkpoint, args.epsilon, args.set)
    users = LiveUsers(http.post, world)
    if args.rate:
        users.one_round = paced(users.one_round, args.rate)
    linucb = LinUCBPlayer(sim_world, embeddings, args.seed)
    windows: list[dict] = []
    failures = 0
    t0 = time.time()
    try:
        for phase in ("before shift", "after shift"):
            if phase == "after shift":
                world.shift()
                sim_world.shift()
                assert (world.experts == sim_world.experts).all()
            uniform, oracle = world.uniform_score(eval_topics), world.oracle_score(eval_topics)
            done = 0
            choices, versions = users.greedy_choices(eval_prompts)
            windows.append({"phase": phase, "rounds": 0, "greedy": world.score_of(eval_topics, choices),
                            "linucb": world.score_of(eval_topics, linucb.greedy(eval_prompts)),
                            "served": None, "linucb_served": None, "uniform": uniform, "oracle": oracle,
                            "versions": sorted(versions), "elapsed_s": time.time() - t0})
            while done < args.rounds:
                n = min(args.eval_every, args.rounds - done)
                prompts, topics = world.prompts(n, stream_rng)
                out = users.play(prompts, topics, clients=args.clients)
                ok = [o for o in out if o["ok"]]
                failures += len(out) - len(ok)
                lin = linucb.play(prompts, topics)
                done += n
                choices, versions = users.greedy_choices(eval_prompts)
                w = {"phase": phase, "rounds": done, "greedy": world.score_of(eval_topics, choices),
                     "linucb": world.score_of(eval_topics, linucb.greedy(eval_prompts)),
                     "served": float(np.mean([o["expected"] for o in ok])) if ok else None,
                     "served_observed": float(np.mean([o["score"] for o in ok])) if ok else None,
                     "served_cost_per_1k": 1000 * float(np.mean([o["cost"] for o in ok])) if ok else None,
                     "linucb_served": float(np.mean(lin)), "uniform": uniform, "oracle": oracle,
                     "versions": sorted(versions), "elapsed_s": time.time() - t0}
                windows.append(w)
                gap = (w["greedy"] - uniform) / (oracle - uniform)
                print(f"{phase:12s} rounds {done:5d}  greedy {w['greedy']:.3f} (gap {gap:+.2f})  served {w['served']:.3f}  "
                      f"LinUCB greedy {w['linucb']:.3f}  versions {w['versions'][-1:]}  "
                      f"[{w['elapsed_s']:.0f}s]", flush=True)
        _, stats = http.get("/v1/stats")
    finally:
        stop_service(proc)
    return summarize(args, windows, stats, failures, time.time() - t0)


def paced(one_round, rate: float):
    """`one_round` started at most `rate` times a second over all clients: feedback arrives at a set
    pace, as traffic does, instead of as fast as the service answers (a faster service would
    otherwise bring more rounds between two of the trainer's updates)."""
    import threading

    lock, slot = threading.Lock(), [time.monotonic()]

    def one(*a):
        with lock:
            start = slot[0] = max(slot[0] + 1 / rate, time.monotonic())
        time.sleep(max(0.0, start - time.monotonic()))
        return one_round(*a)

    return one


def closure(w: dict, key: str) -> float:
    return (w[key] - w["uniform"]) / (w["oracle"] - w["uniform"])


def summarize(args, windows: list[dict], stats: dict, failures: int, seconds: float) -> dict:
    phases = {}
    for phase in ("before shift", "after shift"):
        ws = [w for w in windows if w["phase"] == phase]
        first = next((w["rounds"] for w in ws if w["rounds"] > 0 and closure(w, "greedy") >= GOAL), None)
        first_lin = next((w["rounds"] for w in ws if w["rounds"] > 0 and closure(w, "linucb") >= GOAL), None)
        below = [w["served"] is not None and w["served"] < w["uniform"] for w in ws]
        longest, run = 0, 0
        for b in below:
            run = run + 1 if b else 0
            longest = max(longest, run)
        phases[phase] = {
            "uniform": ws[0]["uniform"], "oracle": ws[0]["oracle"], "start_greedy": ws[0]["greedy"],
            "final_greedy": ws[-1]["greedy"], "final_gap_closed": closure(ws[-1], "greedy"),
            "rounds_to_goal": first, "final_linucb": ws[-1]["linucb"], "linucb_rounds_to_goal": first_lin,
            "served_mean": float(np.mean([w["served"] for w in ws if w["served"] is not None])),
            "linucb_served_mean": float(np.mean([w["linucb_served"] for w in ws if w["linucb_served"] is not None])),
            "served_cost_per_1k": float(np.mean([w["served_cost_per_1k"] for w in ws if w.get("served_cost_per_1k")])),
            "windows_served_below_uniform": int(sum(below)), "longest_run_below_uniform": longest,
            "goal_met": first is not None and longest <= 1,
        }
    trainer = stats.get("trainer", {}) if isinstance(stats, dict) else {}
    return {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "goal_gap_closed": GOAL,
            "phases": phases, "windows": windows, "failed_rounds": failures, "seconds": seconds,
            "rollout_delay_s": trainer.get("rollout_delay_s"), "trainer": trainer,
            "store": stats.get("log") if isinstance(stats, dict) else None}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = result["windows"]
    offset = {"before shift": 0, "after shift": result["settings"]["rounds"]}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, phase in enumerate(offset):  # one line per phase: the shift is a jump, not a slope
        part = [w for w in ws if w["phase"] == phase]
        x = [offset[phase] + w["rounds"] for w in part]
        ax.plot(x, [w["greedy"] for w in part], "o-", color="C0", label="BaRP service, greedy (eval set)" if not i else None)
        ax.plot(x, [w["linucb"] for w in part], "s--", color="C1", label="LinUCB on the same stream, greedy" if not i else None)
        served = [(offset[phase] + w["rounds"], w["served"]) for w in part if w["served"] is not None]
        ax.step([a for a, _ in served], [b for _, b in served], where="pre", color="C2", alpha=0.8,
                label="served (exploring) traffic, per window" if not i else None)
    for phase, p in result["phases"].items():
        lo, hi = offset[phase], offset[phase] + result["settings"]["rounds"]
        ax.hlines(p["uniform"], lo, hi, colors="grey", linestyles="dashed", label="uniform" if lo == 0 else None)
        ax.hlines(p["oracle"], lo, hi, colors="black", linestyles="dotted", label="oracle" if lo == 0 else None)
        target = p["uniform"] + GOAL * (p["oracle"] - p["uniform"])
        ax.hlines(target, lo, hi, colors="green", alpha=0.4, label=f"{GOAL:.0%} of the gap" if lo == 0 else None)
    ax.axvline(result["settings"]["rounds"], color="red", alpha=0.5, label="experts shift")
    ax.set_xlabel("feedback rounds")
    ax.set_ylabel("expected score")
    ax.set_title(f"online adaptation over HTTP (epsilon={result['settings']['epsilon']}, seed {result['settings']['seed']})")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(result: dict) -> str:
    rows = ["| phase | uniform | oracle | start | final greedy | gap closed | rounds to 70% | LinUCB final | LinUCB rounds to 70% | served mean | windows served < uniform (longest run) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for phase, p in result["phases"].items():
        rows.append(f"| {phase} | {p['uniform']:.3f} | {p['oracle']:.3f} | {p['start_greedy']:.3f} | {p['final_greedy']:.3f} | "
                    f"{p['final_gap_closed']:.0%} | {p['rounds_to_goal'] or 'not reached'} | {p['final_linucb']:.3f} | "
                    f"{p['linucb_rounds_to_goal'] or 'not reached'} | {p['served_mean']:.3f} | "
                    f"{p['windows_served_below_uniform']} ({p['longest_run_below_uniform']}) |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "barp-default"))
    p.add_argument("--epsilon", type=float, default=None, help="exploration.epsilon (default: the shipped config's)")
    p.add_argument("--rounds", type=int, default=3000, help="feedback rounds before and again after the shift")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-prompts", type=int, default=120)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rate", type=float, default=None, help="feedback rounds started per second at most (default: as fast as "
                                                            "the clients get answers)")
    p.add_argument("--topics", nargs="+", default=["sql", "poetry", "law", "chemistry"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="app args override, e.g. trainer.window=512")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "online_adapt"))
    p.add_argument("--render", metavar="JSON", help="redraw the table and figure of a saved run, run nothing")
    args = p.parse_args()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        plot(result, Path(args.render).with_suffix(".png"))
        print(table(result))
        return
    if args.epsilon is None:
        args.epsilon = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]["exploration"]["epsilon"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    name = f"eps{args.epsilon:g}_seed{args.seed}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{name}.png")
    print(table(result))
    print(f"rollout delay (feedback 2xx -> every replica serving weights trained on it): {result['rollout_delay_s']}")
    print(f"failed rounds: {result['failed_rounds']}; {result['seconds']:.0f} s; wrote {out / name}.json/.png")


if __name__ == "__main__":
    main()
