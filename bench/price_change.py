"""A price change reaches served routing with no training step and no failed request.

    python bench/price_change.py [--factor 2]

Trains a small price_aware checkpoint on the embedded synthetic world (cached under
bench/out/), serves it with 2 router replicas, reads the exploring distribution for one prompt
at w = (0.5, 0.5), then re-deploys with `prices:` multiplying the favourite model's price by
`--factor` while a client routes without pause. Prints and writes
docs/results/new_model/price_change.json: shares before and after, routes and failures during
the change. (An edited `prices:` in the app's args restarts replicas one by one; the same prices
given as the deployments' `user_config` in the Serve config file reconfigure them in place.)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from serve.ray_env import serve_as_shipped  # noqa: E402

serve_as_shipped()  # Ray, started below, serves in the project's mode (HAProxy ingress)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "new_model" / "price_change.json"))
    args = p.parse_args()
    import ray
    import requests
    from ray import serve

    from barp_ray.config import apply_overrides, load_config
    from barp_ray.training.run import train
    from serve.app import app_builder

    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False)
    work = ROOT / "bench" / "out" / "price_change"
    ckpt = work / "ckpt"
    if not (ckpt / "barp_meta.json").is_file():
        train(apply_overrides(load_config(None), ["data.synthetic_prompts=600", "training.iterations=20",
                                                  "training.rounds_per_iteration=512", "policy.head=price_aware",
                                                  f"output.checkpoint_dir={ckpt}"]), progress=False)
    shutil.rmtree(work / "serve", ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = {"checkpoint": str(ckpt), "log_dir": str(work / "serve" / "log"), "auth": {"disabled": True},
            "trainer": {"state_dir": str(work / "serve" / "trainer"), "enabled": False},
            "router_autoscaling": {"min_replicas": 2, "max_replicas": 2}}
    serve.run(app_builder(base), name="barp", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/route"
    body = {"prompt": "Compose a poem about rain.", "preference": 0.5, "mode": "explore"}
    before = requests.post(url, json=body).json()["probabilities"]
    target = max(before, key=before.get)
    meta = json.loads((ckpt / "barp_meta.json").read_text())
    changed = {target: {k: args.factor * v for k, v in meta["prices"][target].items()}}
    stop, failures, routes = threading.Event(), [], [0]

    def client() -> None:
        while not stop.is_set():
            r = requests.post(url, json=body)
            routes[0] += 1
            if r.status_code != 200:
                failures.append(r.status_code)

    t = threading.Thread(target=client)
    t.start()
    t0 = time.time()
    serve.run(app_builder({**base, "prices": changed}), name="barp", route_prefix="/")
    seconds = time.time() - t0
    time.sleep(1)
    stop.set()
    t.join()
    after = requests.post(url, json=body).json()["probabilities"]
    result = {"model": target, "price_factor": args.factor, "preference": [0.5, 0.5], "share_before": before[target],
              "share_after": after[target], "before": before, "after": after, "redeploy_seconds": seconds,
              "routes_during_change": routes[0], "failed_routes": len(failures)}
    serve.shutdown()
    ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"| model | price x | share before | share after | routes during change | failed |\n|---|---|---|---|---|---|\n"
          f"| {target} | {args.factor:g} | {before[target]:.3f} | {after[target]:.3f} | {routes[0]} | {len(failures)} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
