"""`barp <command>`: one entry point over the project's tools.

Each command lives in its own module with its own `main(argv) -> int`; this file only dispatches,
so importing it costs nothing (Ray, torch and the encoder load inside the chosen command).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("barp_ray.train", "train a router with RLlib and write a checkpoint"),
    "eval": ("barp_ray.evaluation.cli", "evaluate BaRP against baselines; write tables, plots and JSON"),
    "tune": ("barp_ray.evaluation.tune", "a grid of training settings x seeds as Ray Tune trials, ranked on a validation split"),
    "route": ("barp_ray.route_cli", "route prompts with a checkpoint, no cluster or Serve (arguments, stdin lines or JSONL)"),
    "route-dataset": ("barp_ray.dataset_routing", "route a dataset of prompts (Parquet or JSONL, any size) on a Ray cluster with Ray Data"),
    "calibrate": ("serve.budget", "the preference that spends a dollar budget per 1,000 routes on a sample of the traffic"),
    "ope": ("serve.offpolicy_eval", "estimate what checkpoints would earn on the service's logged traffic, before loading one"),
    "replay": ("serve.log_replay", "train a checkpoint on the service's logged rewards as if it had been served; write it"),
    "import-feedback": ("serve.feedback_import", "bring a JSONL feedback log or a feedback archive into the configured store"),
    "export-feedback": ("serve.feedback_export", "write every joined reward in the configured store to Parquet files (nothing deleted)"),
    "check-serve": ("serve.config_check", "check a Serve config file (settings, live offer on every deployment, keys) before serve deploy"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: barp <command> [options]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<16} {help_}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nbarp: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
