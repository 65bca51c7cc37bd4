"""`python -m barp_ray.train --config configs/X.yaml`: train a BaRP router with RLlib, write a checkpoint.

The command line only; the run itself is `barp_ray.training.run.train`. A bad config or data file
is one line naming the field, exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from barp_ray.config import ConfigError, load_config
from barp_ray.data.table import DataError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="barp-train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML training config (default: the embedded synthetic world)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field; a key inside a mapping field by its path: env.preference.kind=dirichlet")
    p.add_argument("--checkpoint-dir", help="shorthand for --set output.checkpoint_dir=...")
    p.add_argument("--no-progress", action="store_true", help="plain log lines only, no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = list(args.set) + ([f"output.checkpoint_dir={args.checkpoint_dir}"] if args.checkpoint_dir else [])
        cfg = load_config(args.config, overrides)
        from barp_ray.training.run import train  # Ray and torch load here, after the config is checked

        train(cfg, progress=not args.no_progress)
    except (ConfigError, DataError) as e:
        print(f"barp-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
