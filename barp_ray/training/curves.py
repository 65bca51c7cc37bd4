"""Training curves as TensorBoard event files in the run directory, where RLlib users look for them.

`tensorboard --logdir <checkpoint_dir>/tensorboard` shows per-iteration train reward, entropy and
losses, and every `output.log_every` iterations the greedy reward on the held-out split at a few
preferences. With a validation config (configs/llmrouter_val.yaml) the held-out split is the
validation part of the train file, so these are the curves to pick iterations and switches on.
"""
from __future__ import annotations

from pathlib import Path

CURVE_PREFERENCES = (0.0, 0.5, 0.8, 1.0)  # w_q values whose held-out reward is logged


class CurveWriter:
    def __init__(self, run_dir: str | Path):
        from tensorboardX import SummaryWriter

        self.path = Path(run_dir) / "tensorboard"
        self._writer = SummaryWriter(logdir=str(self.path), flush_secs=10)

    def iteration(self, row: dict) -> None:
        step = int(row["iteration"])
        for key in ("train_reward", "entropy", "policy_loss", "baseline_loss"):
            if key in row:
                self._writer.add_scalar(f"train/{key}", float(row[key]), step)
        if "validation_sweep_reward" in row:  # early stopping's held-out train prompts
            self._writer.add_scalar("heldout/early_stopping_sweep_reward", float(row["validation_sweep_reward"]), step)
        for w_q, value in row.get("heldout_reward", {}).items():
            self._writer.add_scalar(f"heldout/reward_wq{float(w_q):.1f}", float(value), step)

    def close(self) -> None:
        self._writer.close()
