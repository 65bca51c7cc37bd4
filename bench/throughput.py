"""Training throughput, in bandit rounds (env steps) per second: RLlib BaRP vs a plain torch loop.

    python bench/throughput.py [--quick] [--out bench/out/throughput.json]

Everything runs in ONE process on the same cached embeddings (the embedded synthetic default,
`prepare(load_config(None))`), so the ratios compare like with like on whatever machine this is:

* plain:  a self-contained REINFORCE loop (numpy sampling, one torch forward, bandit rewards from
          `envs.reward.reward` for the chosen arm only, one Adam step per batch): the reference
          for "how fast could this be".
* rllib:  `build_algo_config(cfg, ray.put(BanditData(...)), tau).build_algo()` and `algo.train()`
          with scale.num_env_runners = 0, 1, 2 and the same rounds per iteration.

Fairness on a shared machine: for each RLlib setting the script builds the Algorithm, warms it up,
then ALTERNATES one plain-loop iteration with one `algo.train()` (flipping the order every pair),
so both sides see the same background load; each setting's ratio is taken against the plain
iterations interleaved with it. The "plain torch loop" row is all plain iterations together.
The script also measures how much CPU processes outside its own tree used during each timed block
(from /proc); above --quiet-threshold it repeats the block (up to --max-tries, within
--retry-budget-s), keeps the quietest one, and prints the share in the "others%" column.

Headline rounds/s use the MEDIAN iteration time by default (`--stat mean` for total rounds /
total time; both are in the JSON). On a small shared machine another process grabbing a core
can make single iterations 5-10x slower (torch's intra-op threads then wait on each other), and
the median is what measures the code rather than the neighbours.

RLlib's breakdown comes from result["timers"]. RLlib smooths those timers with an EMA (coeff
0.01) seeded by the very first iteration, so after N iterations they still mostly show warm-up.
The script therefore drops the "timers" stats before each timed `train()` call (outside the timed
span): each result then carries exactly that iteration's sampling / learner-update / weight-sync
times, and the table shows their median (or mean) over the timed iterations. The connector-state
sync (`synch_env_connectors`) is logged by Algorithm.step() after the result is compiled, so it is
read from `algo.metrics` right after each `train()` instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from barp_ray.config import TrainConfig, apply_overrides, load_config  # noqa: E402
from barp_ray.data.prepare import PreparedData, prepare  # noqa: E402
from barp_ray.rl_module import mlp  # noqa: E402  (the same layer stack as the RLModule)
from envs.reward import reward  # noqa: E402

GOAL = 0.5  # RLlib should reach at least this fraction of the plain loop's rounds/s
RUNNER_SETTINGS = (0, 1, 2)
PHASES = {  # our column -> RLlib result["timers"] key (ray.rllib.utils.metrics constants)
    "sample": "env_runner_sampling_timer",
    "learn": "learner_update_timer",
    "sync": "synch_weights",
    "env_state": "synch_env_connectors",  # Algorithm.step: sync_env_runner_states (after training_step)
    "training_step": "training_step",
    "training_iteration": "training_iteration",
}
LATE_PHASES = ("env_state",)
MIN_PAIRS = 5  # timed plain/rllib pairs a block always runs, however slow the machine is


def summarize(per_iter_s: list[float], rounds_per_iter: float) -> dict:
    mean_s, median_s = statistics.fmean(per_iter_s), statistics.median(per_iter_s)
    return {
        "iterations": len(per_iter_s),
        "rounds_per_iter": rounds_per_iter,
        "rounds_per_s_mean": rounds_per_iter / mean_s,  # = total rounds / total time
        "rounds_per_s_median": rounds_per_iter / median_s,
        "ms_per_iter_mean": 1e3 * mean_s,
        "ms_per_iter_median": 1e3 * median_s,
        "ms_per_iter_min": 1e3 * min(per_iter_s),
        "ms_per_iter_max": 1e3 * max(per_iter_s),
    }


class ForeignCPU:
    """Share of the machine's CPU time used by processes OUTSIDE this benchmark's process tree.

    Linux /proc only (None elsewhere). Our tree is this process and its descendants, which covers
    the Ray instance this script starts (raylet, GCS, workers, env-runner actors).
    """

    def __init__(self):
        self.ok = Path("/proc/stat").exists()
        self._start = self._sample() if self.ok else None

    @staticmethod
    def _system() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
        return total - idle, total

    @staticmethod
    def _own_tree() -> int:
        parent, jiffies = {}, {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(pid)] = int(rest[1])
            jiffies[int(pid)] = int(rest[11]) + int(rest[12])  # utime + stime
        me, total = os.getpid(), 0
        for pid, j in jiffies.items():
            p, seen = pid, 0
            while p > 1 and p != me and seen < 64:
                p, seen = parent.get(p, 0), seen + 1
            if p == me:
                total += j
        return total

    def _sample(self) -> tuple[int, int, int]:
        busy, total = self._system()
        return busy, total, self._own_tree()

    def restart(self) -> None:
        if self.ok:
            self._start = self._sample()

    def share(self) -> float | None:
        """Fraction (0..1) of all CPUs' time since restart() that other processes used."""
        if not self.ok:
            return None
        try:
            busy, total, own = self._sample()
        except OSError:
            return None
        b0, t0, o0 = self._start
        if total <= t0:
            return None
        return max(0.0, ((busy - b0) - (own - o0)) / (total - t0))


# --------------------------------------------------------------------------------------------
# 1. The plain torch loop
# --------------------------------------------------------------------------------------------


class PlainPolicy(nn.Module):
    """Same sizes as BaRPRLModule: phi(w) = MLP [32]; head [256, 128] -> K; baseline [128] -> 1."""

    def __init__(self, emb_dim: int, k: int, pref_hidden: list[int], head_hidden: list[int]):
        super().__init__()
        self.preference_net = mlp([2, *pref_hidden], final_activation=True)
        self.decision_head = mlp([emb_dim + pref_hidden[-1], *head_hidden, k], final_activation=False)
        self.baseline_head = mlp([emb_dim + pref_hidden[-1], head_hidden[-1], 1], final_activation=False)

    def forward(self, embedding: torch.Tensor, preference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([embedding, self.preference_net(preference)], dim=-1)
        return self.decision_head(z), self.baseline_head(z).squeeze(-1)


class PlainLoop:
    """REINFORCE + entropy bonus + learned baseline; one update per `rounds_per_iteration` rounds."""

    def __init__(self, data: PreparedData, cfg: TrainConfig, seed: int):
        self.t = cfg.training
        self.batch = self.t.rounds_per_iteration
        self.emb = np.ascontiguousarray(data.train_embeddings, dtype=np.float32)
        self.scores, self.costs, self.tau = data.train.scores, data.train.costs, data.tau
        n, k = self.scores.shape
        self.n = n
        # Mirror training.normalize_advantages (barp_ray/training/learner.py) where the config has that field.
        self.normalize = bool(getattr(self.t, "normalize_advantages", False))
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        pref_hidden, head_hidden = list(cfg.policy.preference_hidden), list(cfg.policy.head_hidden)
        self.policy = PlainPolicy(self.emb.shape[1], k, pref_hidden, head_hidden)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=self.t.lr)

    def step(self) -> float:
        """One iteration: sample `batch` rounds, act, get bandit rewards, one gradient step. Returns mean reward."""
        t, rng, batch = self.t, self.rng, self.batch
        # Sample rounds: prompt rows and uniform preferences w = (w_q, 1 - w_q).
        rows = rng.integers(self.n, size=batch)
        wq = rng.random(batch)
        w = np.stack([wq, 1.0 - wq], axis=1).astype(np.float32)
        # One forward pass serves both acting and the update (on-policy).
        logits, b = self.policy(torch.from_numpy(self.emb[rows]), torch.from_numpy(w))
        logp_all = torch.log_softmax(logits, dim=-1)
        with torch.no_grad():
            actions = torch.multinomial(logp_all.exp(), 1).squeeze(-1)
        # Bandit feedback: the hidden score/cost of the chosen arm only.
        a = actions.numpy()
        q, c = self.scores[rows, a], self.costs[rows, a]
        r = torch.from_numpy(reward(q, c, w[:, 0], w[:, 1], self.tau).astype(np.float32))
        # Loss: policy gradient with a learned baseline, entropy bonus, baseline regression.
        logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        advantage = r - b.detach()
        if self.normalize:
            advantage = advantage / (advantage.std() + 1e-6)
        policy_loss = -(advantage * logp).mean()
        baseline_loss = ((b - r) ** 2).mean()
        loss = policy_loss - t.entropy_coeff * entropy + t.baseline_coeff * baseline_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), t.grad_clip)
        self.opt.step()
        return float(r.mean())


# --------------------------------------------------------------------------------------------
# 2. RLlib BaRP
# --------------------------------------------------------------------------------------------


class RLlibLoop:
    """`build_algo_config(...).build_algo()`; step() = one `algo.train()` with this iteration's timers."""

    def __init__(self, data_ref, data: PreparedData, cfg: TrainConfig):
        from barp_ray.training.run import build_algo_config

        t0 = time.perf_counter()
        self.algo = build_algo_config(cfg, data_ref, data.tau).build_algo()
        self.build_s = time.perf_counter() - t0
        self.phases: dict[str, list[float]] = {name: [] for name in PHASES}
        self.steps_before: int | None = None
        self.last: dict | None = None

    def warmup(self) -> None:
        self.algo.train()

    def reset(self) -> None:
        """Forget timed figures (a retried block starts afresh; the Algorithm keeps training)."""
        self.phases = {name: [] for name in PHASES}
        self.steps_before = None

    def step(self) -> float:
        """One timed `algo.train()`; returns its wall time in seconds."""
        # Fresh timer stats: result["timers"] then holds this iteration's values instead of an EMA
        # seeded by the first (warm-up) iteration. Done outside the timed span.
        self.algo.metrics.delete("timers", key_error=False)
        t0 = time.perf_counter()
        res = self.algo.train()
        elapsed = time.perf_counter() - t0
        if self.steps_before is None:
            self.steps_before = _lifetime_steps(res) - int(res["env_runners"]["num_env_steps_sampled"])
        for name, key in PHASES.items():
            if name in LATE_PHASES:
                # Logged by Algorithm.step() after this iteration's results were compiled (it would only
                # show up in the next result): read it from the Algorithm's MetricsLogger directly.
                value = self.algo.metrics.peek(("timers", key), default=None)
            else:
                value = res.get("timers", {}).get(key)
            self.phases[name].append(float(value) if value is not None else math.nan)
        self.last = res
        return elapsed

    def summary(self, per_iter: list[float]) -> dict:
        rounds = _lifetime_steps(self.last) - self.steps_before
        sums = [
            sum(v for p in ("sample", "learn", "sync", "env_state") if not math.isnan(v := self.phases[p][i]))
            for i in range(len(per_iter))
        ]
        phases = {**self.phases, "other": [it - s for it, s in zip(per_iter, sums)]}
        learner = self.last["learners"]["default_policy"]
        return {
            **summarize(per_iter, rounds / len(per_iter)),
            "build_s": self.build_s,
            "rounds": rounds,
            "phase_ms_median": {p: _ms(statistics.median, v) for p, v in phases.items()},
            "phase_ms_mean": {p: _ms(statistics.fmean, v) for p, v in phases.items()},
            "num_remote_env_runners": self.algo.env_runner_group.num_remote_env_runners(),
            "train_reward_last": float(self.last["env_runners"]["episode_return_mean"]),
            "entropy_last": float(learner["entropy"]),
        }

    def stop(self) -> None:
        self.algo.stop()


def _ms(fn, values: list[float]) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    return 1e3 * fn(vals) if vals else None


def _lifetime_steps(result: dict) -> int:
    if "num_env_steps_sampled_lifetime" in result:
        return int(result["num_env_steps_sampled_lifetime"])
    return int(result["env_runners"]["num_env_steps_sampled_lifetime"])


# --------------------------------------------------------------------------------------------
# 3. Driver
# --------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import ray

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
        "ray_version": ray.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def print_table(plain_all: dict, rows: list[dict], stat: str, quiet_threshold: float, out=sys.stdout) -> None:
    rps, ms = f"rounds_per_s_{stat}", f"ms_per_iter_{stat}"
    head = (
        f"{'setting':<36s} {'rounds/s':>9s} {'plain r/s':>9s} {'vs plain':>8s} {'goal':>4s} "
        f"{'iter ms':>8s} {'sample ms':>9s} {'learn ms':>8s} {'sync ms':>7s} {'state ms':>8s} {'other ms':>8s} "
        f"{'others%':>7s}"
    )
    print(head, file=out)
    print("-" * len(head), file=out)
    print(
        f"{'plain torch loop (all blocks)':<36s} {plain_all[rps]:>9,.0f} {'':>9s} {1.0:>8.3f} {'':>4s} "
        f"{plain_all[ms]:>8.1f}",
        file=out,
    )
    for r in rows:
        ph = r[f"phase_ms_{stat}"]
        print(
            f"{r['setting']:<36s} {r[rps]:>9,.0f} {r['plain_paired'][rps]:>9,.0f} {r['ratio_vs_plain']:>8.3f} "
            f"{'yes' if r['meets_goal'] else 'NO':>4s} {r[ms]:>8.1f} {_fmt(ph['sample'], '.1f'):>9s} "
            f"{_fmt(ph['learn'], '.1f'):>8s} {_fmt(ph['sync'], '.1f'):>7s} {_fmt(ph['env_state'], '.2f'):>8s} "
            f"{_fmt(ph['other'], '.1f'):>8s} {_fmt(_pct(r.get('other_processes_cpu_share')), '.0f'):>7s}",
            file=out,
        )
    print(
        f"\n{stat} per-iteration figures. Each setting's block alternates one plain-loop iteration with one\n"
        "algo.train(); 'plain r/s' is the plain loop within that block and 'vs plain' = rounds/s / plain r/s.\n"
        "sample / learn / sync / state: RLlib result['timers'] env_runner_sampling_timer / learner_update_timer /\n"
        "synch_weights / synch_env_connectors (connector-state merge+broadcast after training_step), per timed\n"
        "iteration; other: the rest of algo.train() (batch concatenation, metrics, bookkeeping).\n"
        "others%: share of the machine's CPU time used by processes outside this benchmark during the block.",
        file=out,
    )
    noisy = [r for r in rows if (r.get("other_processes_cpu_share") or 0.0) > quiet_threshold]
    if noisy:
        print(
            f"WARNING: other processes used > {quiet_threshold:.0%} of the CPUs during "
            f"{', '.join(r['setting'] for r in noisy)}; those figures measure the neighbours as much as the code.",
            file=out,
        )
    print(f"\ngoal: RLlib >= {GOAL:.0%} of the plain loop's rounds/s", file=out)
    for r in rows:
        verdict = "meets the goal" if r["meets_goal"] else "MISSES the goal"
        print(f"  {r['setting']:<36s} {verdict}: {r['ratio_vs_plain']:.1%} of plain", file=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations: a ~1 minute smoke run")
    p.add_argument("--out", default="bench/out/throughput.json", help="JSON results path (default: %(default)s)")
    p.add_argument(
        "--iters",
        type=int,
        help="timed iterations per setting, each side (default 40; --quick 8; fewer if --block-budget-s runs out)",
    )
    p.add_argument("--warmup", type=int, help="untimed iterations per setting (default 5; --quick 2)")
    p.add_argument(
        "--runners",
        default=",".join(map(str, RUNNER_SETTINGS)),
        help="comma-separated num_env_runners settings (default: %(default)s)",
    )
    p.add_argument(
        "--stat", choices=("median", "mean"), default="median", help="per-iteration statistic for the table and goal"
    )
    p.add_argument(
        "--torch-threads", type=int, help="torch.set_num_threads in this process (default: leave torch's default)"
    )
    p.add_argument(
        "--max-tries",
        type=int,
        help="timed blocks per setting while other processes load the machine (default 3; --quick 1)",
    )
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.10,
        help="share of all CPUs other processes may use before a block is retried (default: %(default)s)",
    )
    p.add_argument(
        "--block-budget-s",
        type=float,
        help=f"end a timed block after this many seconds, once it has {MIN_PAIRS} pairs (default 30; --quick 15)",
    )
    p.add_argument(
        "--retry-budget-s",
        type=float,
        default=120.0,
        help="no retries once the run is this old (default: %(default)s s)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="config override for every run (e.g. training.rounds_per_iteration=8192)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    iters = args.iters or (8 if args.quick else 40)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    runner_settings = [int(x) for x in args.runners.split(",") if x.strip()]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    import ray

    from envs.routing_env import BanditData

    started = time.time()
    base_cfg = load_config(None)
    if args.set:
        base_cfg = apply_overrides(base_cfg, list(args.set))
    data = prepare(base_cfg)
    info = machine_info()
    print(
        f"data: synthetic default, train={data.train.n} prompts x {data.train.k} models, "
        f"embeddings {tuple(data.train_embeddings.shape)}, tau=${data.tau:.6g}",
        flush=True,
    )
    print(
        f"machine: {info['cpu_count']} CPUs (affinity {info['cpu_affinity']}), torch {info['torch_version']} "
        f"threads={info['torch_threads']}, ray {info['ray_version']}, load avg {info['loadavg_at_start']}",
        flush=True,
    )
    print(
        f"rounds/iteration={base_cfg.training.rounds_per_iteration}  warmup={warmup}  "
        f"timed iterations={iters} per setting (each side, alternating plain / rllib)",
        flush=True,
    )

    plain = PlainLoop(data, base_cfg, seed=base_cfg.training.seed)
    for _ in range(warmup):
        plain.step()
    plain_times_all: list[float] = []
    attempts: list[dict] = []
    foreign = ForeignCPU()
    max_tries = args.max_tries if args.max_tries else (1 if args.quick else 3)
    deadline = started + args.retry_budget_s
    block_budget = args.block_budget_s if args.block_budget_s else (15.0 if args.quick else 30.0)
    plain_rewards: list[float] = []
    rows: list[dict] = []
    failed: list[dict] = []

    # address="local": always start our own instance, never attach to another job's cluster on this machine.
    ray.init(
        address="local", num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False, logging_level="ERROR"
    )
    info["torch_threads_after_ray_init"] = torch.get_num_threads()
    try:
        data_ref = ray.put(BanditData(data.train_embeddings, data.train.scores, data.train.costs, data.train.models))
        for r in runner_settings:
            overrides = [f"scale.num_env_runners={r}"]
            cfg = apply_overrides(base_cfg, overrides)
            setting = f"rllib num_env_runners={r}" + (" (oversubscr.)" if r >= 2 else "")
            row = {"setting": setting, "overrides": overrides, "scale": cfg.to_dict()["scale"]}
            loop = None
            try:
                loop = RLlibLoop(data_ref, data, cfg)
                for _ in range(warmup):
                    loop.warmup()
                plain.step()  # re-warm the plain loop's caches after the build
                best = None
                for attempt in range(1, max_tries + 1):
                    loop.reset()
                    foreign.restart()
                    plain_times, rllib_times, rewards = [], [], []
                    block_start = time.perf_counter()
                    for i in range(iters):
                        if i >= MIN_PAIRS and time.perf_counter() - block_start > block_budget:
                            break  # a heavily loaded machine: stop the block early rather than run for minutes
                        # Alternate which side goes first so neither always follows the other.
                        for side in ("plain", "rllib") if i % 2 == 0 else ("rllib", "plain"):
                            if side == "plain":
                                t0 = time.perf_counter()
                                rewards.append(plain.step())
                                plain_times.append(time.perf_counter() - t0)
                            else:
                                rllib_times.append(loop.step())
                    share = foreign.share()
                    block = {
                        **loop.summary(rllib_times),
                        "other_processes_cpu_share": share,
                        "attempt": attempt,
                        "block_seconds": time.perf_counter() - block_start,
                    }
                    attempts.append(
                        {
                            "setting": setting,
                            "attempt": attempt,
                            "other_processes_cpu_share": share,
                            "rllib_ms_per_iter_median": block["ms_per_iter_median"],
                            "plain_ms_per_iter_median": 1e3 * statistics.median(plain_times),
                        }
                    )
                    if best is None or (share or 0.0) < (best[0]["other_processes_cpu_share"] or 0.0):
                        best = (block, plain_times, rewards)
                    busy = share is not None and share > args.quiet_threshold
                    if busy:
                        print(f"    attempt {attempt}: other processes used {share:.0%} of the CPUs", flush=True)
                    if not busy or attempt == max_tries or time.time() > deadline:
                        break
                block, plain_times, rewards = best
                plain_rewards.extend(rewards)
                row.update(block)
            except Exception as e:  # e.g. another job's `ray stop` killed our raylet: keep the other figures
                row["error"] = f"{type(e).__name__}: {e}"[:2000]
                failed.append(row)
                print(f"  {setting}: FAILED ({row['error'][:300]})", flush=True)
                continue
            finally:
                if loop is not None:
                    loop.stop()
            plain_times_all.extend(plain_times)
            row["plain_paired"] = summarize(plain_times, plain.batch)
            key = f"rounds_per_s_{args.stat}"
            row["ratio_vs_plain"] = row[key] / row["plain_paired"][key]
            row["ratio_vs_plain_median_stat"] = row["rounds_per_s_median"] / row["plain_paired"]["rounds_per_s_median"]
            row["ratio_vs_plain_mean_stat"] = row["rounds_per_s_mean"] / row["plain_paired"]["rounds_per_s_mean"]
            row["meets_goal"] = row["ratio_vs_plain"] >= GOAL
            rows.append(row)
            print(
                f"  {setting}: {row[key]:,.0f} rounds/s vs plain {row['plain_paired'][key]:,.0f} "
                f"({row['ratio_vs_plain']:.3f}x, {args.stat}, {row['iterations']} pairs; "
                f"built in {row['build_s']:.1f}s; "
                f"others used {_fmt(_pct(row['other_processes_cpu_share']), '.0f')}% CPU)",
                flush=True,
            )
    finally:
        ray.shutdown()

    if not plain_times_all:
        print("no setting completed", file=sys.stderr)
        return 1
    plain_all = summarize(plain_times_all, plain.batch)
    plain_all["train_reward_last"] = plain_rewards[-1]
    plain_all["normalize_advantages"] = plain.normalize
    print()
    print_table(plain_all, rows, args.stat, args.quiet_threshold)
    info["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "bench/throughput.py",
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_seconds": time.time() - started,
        "units": "rounds_per_s: bandit rounds (one-step episodes = env steps) trained per second",
        "goal": {
            "rllib_fraction_of_plain": GOAL,
            "statistic": args.stat,
            "measured_against": "the plain loop's iterations interleaved with that setting's algo.train() calls",
        },
        "settings": {
            "quick": args.quick,
            "warmup_iterations": warmup,
            "timed_iterations_per_setting_each_side": iters,
            "statistic": args.stat,
            "rounds_per_iteration": base_cfg.training.rounds_per_iteration,
            "num_env_runners": runner_settings,
            "schedule": "per setting: build algo, warm up, then alternate one plain iteration and one algo.train() "
            "(order flipped every pair); while other processes use > quiet_threshold of the CPUs, repeat the timed "
            "block (up to max_tries, not after retry_budget_s) and keep the quietest",
            "max_tries": max_tries,
            "quiet_threshold": args.quiet_threshold,
            "retry_budget_s": args.retry_budget_s,
            "block_budget_s": block_budget,
            "min_pairs_per_block": MIN_PAIRS,
            "ray_init": {
                "address": "local",
                "num_cpus": 2,
                "object_store_memory": 300 * 1024**2,
                "include_dashboard": False,
            },
            "torch_threads_requested": args.torch_threads,
            "overrides": list(args.set),
            "config": base_cfg.to_dict(),
            "plain_loop": {
                "network": str(plain.policy),
                "parameters": sum(x.numel() for x in plain.policy.parameters()),
                "loss": "-(A * log pi(a)) - entropy_coeff * H + baseline_coeff * (b - r)^2, batch means; "
                "A = r - b.detach() (divided by its batch std if training.normalize_advantages)",
                "optimizer": f"Adam lr={base_cfg.training.lr}, clip_grad_norm {base_cfg.training.grad_clip}",
                "sampling": "numpy rows + uniform w_q; one forward (with grad) serves acting and the update",
            },
            "rllib_phase_timers": "result['timers'] per timed iteration (timer stats reset before each); "
            "other = algo.train() wall time - sample - learn - sync - env_state",
        },
        "data": {
            "source": "synthetic default: prepare(load_config(None))",
            "train_prompts": data.train.n,
            "models": list(data.train.models),
            "embedding_dim": int(data.train_embeddings.shape[1]),
            "tau": data.tau,
        },
        "machine": info,
        "plain": plain_all,
        "rllib": rows,
        "rllib_failed": failed,
        "attempts": attempts,
    }
    out.write_text(json.dumps(report, indent=2, default=float))
    print(f"\nwrote {out}  ({report['total_seconds']:.0f}s total)")
    if failed:
        print(f"{len(failed)} RLlib setting(s) failed: {', '.join(f['setting'] for f in failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
