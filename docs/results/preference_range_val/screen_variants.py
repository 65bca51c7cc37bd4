"""Train variants on the six (or more) validation draws without the baselines, for `paired_sweep.py`:
seed s trains on draw s (`data.seed` = s), as `bench/preference_ablation.py --vary-split` does, and
writes runs/ablation/<name>/seed-s. A screening aid (session 39): the ablation bench spends most of
its time refitting the baselines, which do not change between variants.

    python docs/results/preference_range_val/screen_variants.py --seeds 0-5 --variant "NAME=section.field=value,..."
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from barp_ray.config import apply_overrides, load_config  # noqa: E402
from barp_ray.training.run import train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(ROOT / "configs" / "llmrouter_val_balanced.yaml"))
    p.add_argument("--seeds", default="0-5", help="first-last")
    p.add_argument("--variant", action="append", required=True, help="NAME=section.field=value,...")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="train draw s with training.seed s + offset (another training seed on the same draws)")
    args = p.parse_args()
    first, last = (int(x) for x in args.seeds.split("-"))
    base = load_config(args.config)
    quiet = open(os.devnull, "w")
    for seed in range(first, last + 1):
        for spec in args.variant:
            name, _, sets = spec.partition("=")
            cfg = apply_overrides(base, [*[s for s in sets.split(",") if s], f"data.seed={seed}", f"training.seed={seed + args.seed_offset}",
                                         f"output.checkpoint_dir={ROOT}/runs/ablation/{name}/seed-{seed}"])
            t0 = time.time()
            train(cfg, progress=False, out=quiet)
            print(f"seed {seed} {name}: {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
