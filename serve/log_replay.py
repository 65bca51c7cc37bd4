"""`barp replay CHECKPOINT --out DIR`: a checkpoint trained on the service's logged rewards, as if
it had been served while they came in, before it serves anything.

Why: to try another checkpoint (a new head, other offline settings) or other continuous-training
settings (`--set trainer.lr=...`) on the traffic the service has already seen. The rewards are
replayed in the order they arrived, `--batch` at a time, through the same `ContinuousTrainer` the
service runs (its loss, importance weights against the logged propensities, replay window and
forgetting), with the gate off; the learner's final weights (policy and critic) are written as a
checkpoint. Rounds in the `--holdout` share (a fixed function of the request id) are never
trained on, so `barp ope --holdout` with the same share judges the result on rounds it has not
seen, and `load_checkpoint` with `mode: gated` puts it live only if the gate agrees.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


class ReplayError(ValueError):
    """A one-line problem with the inputs, naming the argument."""


def replay(settings, checkpoint: str, out: Path, batch: int, holdout: float, progress=print, archive: bool = False) -> dict:
    """Train `checkpoint` over every reward in the store `settings` names (with `archive`, first those
    retention moved to its archive); write it to `out`."""
    from barp_ray.policy import META_FILE, RL_MODULE_PATH, CheckpointError, RoutingPolicy, read_meta
    from serve.feedback_archive import open_rewards
    from serve.trainer import ContinuousTrainer

    try:
        RoutingPolicy.load(checkpoint)
    except CheckpointError as e:
        raise ReplayError(f"checkpoint: {e}") from None
    reader = open_rewards(settings, archive)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="barp-replay-") as state:
        s = dataclasses.replace(
            settings, checkpoint=checkpoint,
            trainer=dataclasses.replace(settings.trainer, state_dir=state, enabled=True, max_wait_s=0.0),  # a short last batch too
            rollout=dataclasses.replace(settings.rollout, enabled=False, holdout_fraction=holdout))
        trainer = ContinuousTrainer(s, reader=reader, commit_offsets=False)
        try:
            updates = forgets = 0
            while (row := trainer.train_once(limit=batch)) is not None:
                updates += 1
                forgets += bool(row["forgot"])
                if updates % 50 == 0:
                    progress(f"  {updates} updates, through reward {row['offset']}")
            if updates == 0:
                raise ReplayError("feedback store: no rewards to replay")
            trainer._learner_weights()  # the learner's whole module (policy and critic) into scratch
            out.mkdir(parents=True, exist_ok=True)
            trainer.scratch.save_to_path(str(out / RL_MODULE_PATH))
            trainer_settings = {k: v for k, v in dataclasses.asdict(s.trainer).items() if k != "state_dir"}
            summary = {"from": checkpoint, "through_id": trainer.offset, "archive": archive, "updates": updates, "forgets": forgets,
                       "holdout": holdout, "batch": batch, "trainer": trainer_settings,
                       "seconds": round(time.time() - started, 1)}
        finally:
            trainer.close()
    meta = read_meta(checkpoint)
    meta["replayed"] = summary
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="barp replay", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="the checkpoint to train further (a directory or storage URI)")
    p.add_argument("--out", required=True, help="directory for the new checkpoint (must not exist, or be empty)")
    p.add_argument("--config", default="configs/serve.yaml", help="serve config naming the feedback store and trainer settings")
    p.add_argument("--set", action="append", default=[], help="override an app arg, e.g. trainer.lr=0.0005")
    p.add_argument("--batch", type=int, default=256, help="rewards per update, as the service would take them under load")
    p.add_argument("--holdout", type=float, default=0.2, help="share of rounds never trained on (judge on them: barp ope --holdout)")
    p.add_argument("--archive", action="store_true", help="replay the rewards retention archived (retention.archive) first")
    args = p.parse_args(argv)
    from serve.feedback_archive import ArchiveError
    from serve.feedback_db import DatabaseError
    from serve.settings import SettingsError, settings_from_config

    out = Path(args.out)
    try:
        if args.batch < 1:
            raise ReplayError(f"--batch: must be >= 1, got {args.batch}")
        if not 0 <= args.holdout < 1:
            raise ReplayError(f"--holdout: must be in [0, 1), got {args.holdout}")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ReplayError(f"--out: {out} exists and is not an empty directory")
        settings = settings_from_config(args.config, args.set)
        summary = replay(settings, args.checkpoint, out, args.batch, args.holdout, archive=args.archive)
    except (ReplayError, ArchiveError, SettingsError, DatabaseError, OSError) as e:
        if out.exists() and not any(out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        print(f"barp replay: error: {e}", file=sys.stderr)
        return 2
    print(f"replayed the rewards through id {summary['through_id']} in {summary['updates']} updates ({summary['forgets']} forgets, "
          f"{args.holdout:.0%} held out) in {summary['seconds']} s; wrote {out}")
    print(f"judge it on the held-out rounds: barp ope {out} {args.checkpoint} --config {args.config} --holdout {args.holdout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
