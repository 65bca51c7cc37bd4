"""Check the GPU learner path: the same BaRP config, learners on CUDA, env runners on CPU.

Runs (1) a local learner on the GPU (num_learners=0, num_gpus_per_learner=1) and (2) one remote
GPU learner actor with CPU env runners (num_learners=1, num_gpus_per_learner=1), and checks
that the learner's parameters live on CUDA, that training improves the test reward, and that a
checkpoint written by a GPU learner restores on the CPU with identical probabilities.
Prints a table and writes JSON (default bench/out/gpu_learner_check.json).

    python bench/gpu_learner_check.py [--iterations 40] [--out PATH]
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


def run_case(name: str, overrides: list[str], iterations: int, data, ray_mod) -> dict:
    import numpy as np
    import torch

    from barp_ray.config import apply_overrides, load_config
    from barp_ray.policy import META_FILE, RoutingPolicy
    from barp_ray.scoring import greedy_actions, score_actions
    from barp_ray.training.run import build_algo_config
    from envs.routing_env import BanditData

    cfg = apply_overrides(load_config(None), [f"training.iterations={iterations}", *overrides])
    ref = ray_mod.put(BanditData(data.train_embeddings, data.train.scores, data.train.costs, data.train.models))
    algo = build_algo_config(cfg, ref, data.tau).build_algo()
    w = tuple(cfg.env.eval_preference)
    learner_devices = algo.learner_group.foreach_learner(
        lambda learner: str(next(learner.module["default_policy"].parameters()).device)
    )
    devices = sorted({r.get() if hasattr(r, "get") else r for r in learner_devices})
    before = score_actions(data.test, greedy_actions(algo.get_module(), data.test_embeddings, w), w, data.tau).reward
    algo.train()  # warm-up (CUDA context, first sync)
    t0 = time.perf_counter()
    for _ in range(iterations - 1):
        res = algo.train()
    secs = time.perf_counter() - t0
    rounds = (iterations - 1) * cfg.training.rounds_per_iteration
    module = algo.get_module()
    after = score_actions(data.test, greedy_actions(module, data.test_embeddings, w), w, data.tau).reward
    ckpt = Path(tempfile.mkdtemp(prefix=f"gpu-{name}-"))
    algo.save_to_path(str(ckpt))
    (ckpt / META_FILE).write_text(json.dumps({"models": list(data.train.models), "tau": data.tau, "encoder": "packaged"}))
    timers = {k: float(v) for k, v in res.get("timers", {}).items() if isinstance(v, (int, float))}
    algo.stop()
    restored = RoutingPolicy.load(ckpt)
    prefs = np.random.default_rng(0).dirichlet([1, 1], size=data.test.n).astype(np.float32)
    with torch.no_grad():
        p_cpu = restored.probabilities(data.test_embeddings, prefs)
        p_orig = module.action_probabilities(torch.from_numpy(data.test_embeddings), torch.from_numpy(prefs)).cpu().numpy()
    return {
        "case": name,
        "overrides": overrides,
        "learner_devices": devices,
        "rounds_per_s": rounds / secs,
        "test_reward_before": before,
        "test_reward_after": after,
        "restored_on_cpu_max_abs_diff": float(np.abs(p_cpu - p_orig).max()),
        "restored_module_device": str(next(restored.module.parameters()).device),
        "timers_s": timers,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--out", default="bench/out/gpu_learner_check.json")
    p.add_argument("--env-runners", type=int, default=4)
    args = p.parse_args()

    import ray
    import torch

    from barp_ray.config import load_config
    from barp_ray.data.prepare import prepare

    data = prepare(load_config(None))
    ray.init(include_dashboard=False, logging_level="WARNING", object_store_memory=2 * 1024**3)
    gpus = ray.cluster_resources().get("GPU", 0)
    print(f"torch {torch.__version__} cuda={torch.cuda.is_available()} ray GPUs={gpus}", flush=True)
    cases = [
        ("cpu_local_learner", ["scale.num_learners=0", "scale.num_gpus_per_learner=0"]),
        ("gpu_local_learner", ["scale.num_learners=0", "scale.num_gpus_per_learner=1"]),
        (
            "gpu_remote_learner",
            ["scale.num_learners=1", "scale.num_gpus_per_learner=1", f"scale.num_env_runners={args.env_runners}",
             "training.rounds_per_iteration=16384"],
        ),
    ]
    results = []
    for name, over in cases:
        if "gpu" in name and gpus < 1:
            print(f"skip {name}: no GPU", flush=True)
            continue
        try:
            results.append(run_case(name, over, args.iterations, data, ray))
        except Exception as e:  # noqa: BLE001 - report and go on to the next case
            results.append({"case": name, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(results[-1], default=str), flush=True)
    ray.shutdown()
    print(f"\n{'case':<22} {'devices':<12} {'rounds/s':>10} {'reward before':>14} {'after':>8} {'cpu restore diff':>17}")
    ok = True
    for r in results:
        if "error" in r:
            ok = False
            print(f"{r['case']:<22} ERROR {r['error']}")
            continue
        print(
            f"{r['case']:<22} {','.join(r['learner_devices']):<12} {r['rounds_per_s']:>10.0f} "
            f"{r['test_reward_before']:>14.4f} {r['test_reward_after']:>8.4f} {r['restored_on_cpu_max_abs_diff']:>17.2e}"
        )
        expect_cuda = "gpu" in r["case"]
        ok &= all(d.startswith("cuda") for d in r["learner_devices"]) == expect_cuda
        ok &= r["test_reward_after"] > r["test_reward_before"] and r["restored_on_cpu_max_abs_diff"] < 1e-5
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "ok": ok}, indent=2, default=str))
    print(f"\nall checks passed: {ok}  ({out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
