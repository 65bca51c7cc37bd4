"""Continuous training from served feedback: importance-weighted REINFORCE on the reward log.

Reads joined (context, action, behaviour probability, reward) records from rewards.jsonl in
order, in batches; each batch is one update of the same loss RLlib training uses
(`barp_ray.learner.barp_loss`) with clipped importance weights pi/mu, because the data came
from an older (or greedy) policy. After each update the weights, optimizer state, version and
log offset are saved together, atomically: after a restart training resumes exactly at the
saved offset, so no accepted reward is lost or used twice.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barp_ray.learner import LossSettings, barp_loss
from barp_ray.policy import RoutingPolicy
from ray.rllib.core.columns import Columns
from serve.feedback_log import decode_vector, read_rewards

STATE = "state"
PROGRESS = "progress.json"


def latest_published(state_dir: str | Path) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The trainer's last saved (version, weights), read from disk, so a replica that starts while
    the trainer is down serves the newest weights rather than the original checkpoint's."""
    state = Path(state_dir) / STATE
    try:
        version = int(json.loads((state / PROGRESS).read_text())["version"])
        return version, torch.load(state / "module.pt", weights_only=True)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


class ContinuousTrainer:
    def __init__(self, checkpoint: str, log_dir: str, state_dir: str, settings) -> None:
        self.log_dir = log_dir
        self.state_dir = Path(state_dir)
        self.settings = settings
        policy = RoutingPolicy.load(checkpoint)
        self.models = policy.models
        self.module = policy.module
        self.module.train()
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=settings.lr)
        self.loss_settings = LossSettings(
            entropy_coeff=settings.entropy_coeff,
            baseline="learned" if getattr(self.module, "baseline_head", None) is not None else "mean",
            importance_weight_clip=settings.importance_weight_clip,
        )
        self.offset = 0
        self.version = 0
        self.updates: list[dict] = []
        self._resume()

    def _resume(self) -> None:
        progress = self.state_dir / STATE / PROGRESS
        if not progress.is_file():
            return
        p = json.loads(progress.read_text())
        self.module.load_state_dict(torch.load(self.state_dir / STATE / "module.pt", weights_only=True))
        self.optimizer.load_state_dict(torch.load(self.state_dir / STATE / "optimizer.pt", weights_only=True))
        self.offset, self.version = int(p["offset"]), int(p["version"])

    def _save(self) -> None:
        """Write to a fresh directory, then swap it in: a crash leaves the old state or the new, never half."""
        tmp = self.state_dir / f"{STATE}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(self.module.state_dict(), tmp / "module.pt")
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / PROGRESS).write_text(json.dumps({"offset": self.offset, "version": self.version, "time": time.time()}))
        old = self.state_dir / f"{STATE}.old"
        shutil.rmtree(old, ignore_errors=True)
        if (self.state_dir / STATE).exists():
            os.replace(self.state_dir / STATE, old)
        os.replace(tmp, self.state_dir / STATE)
        shutil.rmtree(old, ignore_errors=True)

    def train_once(self) -> dict[str, Any] | None:
        """One update if a full batch of new feedback is in the log; None otherwise."""
        records, new_offset = read_rewards(self.log_dir, self.offset, self.settings.batch_size)
        if len(records) < self.settings.batch_size:
            return None
        index = {m: i for i, m in enumerate(self.models)}
        emb = torch.from_numpy(np.stack([decode_vector(r["embedding"]) for r in records]))
        pref = torch.tensor([r["preference"] for r in records], dtype=torch.float32)
        actions = torch.tensor([index[r["model"]] for r in records])
        rewards = torch.tensor([r["reward"] for r in records], dtype=torch.float32)
        behaviour_logp = torch.log(torch.tensor([r["behaviour_prob"] for r in records], dtype=torch.float32).clamp_min(1e-6))
        out = self.module.forward_train({Columns.OBS: {"embedding": emb, "preference": pref}})
        loss, stats = barp_loss(
            out[Columns.ACTION_DIST_INPUTS], actions, rewards, self.loss_settings,
            baseline=out.get("baseline"), behaviour_logp=behaviour_logp,
        )
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.offset, self.version = new_offset, self.version + 1
        self._save()
        row = {"version": self.version, "offset": self.offset, "records": len(records), **{k: float(v) for k, v in stats.items()}}
        self.updates.append(row)
        return row

    def load_checkpoint(self, path: str) -> int:
        """Adopt a checkpoint's weights as the next version; refuses (ValueError) anything incompatible."""
        from barp_ray.policy import CheckpointError

        try:
            candidate = RoutingPolicy.load(path)
        except CheckpointError as e:
            raise ValueError(f"path: {e}") from None
        if candidate.models != self.models:
            raise ValueError(f"path: checkpoint routes {list(candidate.models)}, this service routes {list(self.models)}")
        mine, theirs = self.module.state_dict(), candidate.module.state_dict()
        bad = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
        if bad or set(theirs) - set(mine):
            raise ValueError(f"path: incompatible network (mismatched tensors {bad[:3] or sorted(set(theirs) - set(mine))[:3]})")
        self.module.load_state_dict(theirs)
        self.version += 1
        self._save()
        return self.version

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.module.state_dict().items()}
