"""Where the served answers' score dropped: the replay window's cut point after a change in the world.

Why the trainer needs it: the replay window holds the newest `trainer.window` rewards, so after
the world changes (a model got worse, a provider changed what it serves) most of the window still
says what the old world paid. The learner then averages two worlds and leaves the models that
used to be best only as fast as the window turns over: measured in `bench/live_loop.py`, 22 of 24
seeds back at 70 % of the uniform -> oracle gap within 800 rounds after a shift, the slowest not
at all. A drop in the mean score of the served answers that is too large to be noise is the
sign (the trainer says why the score and not the reward); the records before it describe a world
that is gone, so the trainer forgets them.

The test is one-sided (only a drop): a score that rises is the policy learning, not a reason to
forget. It scans every cut point of the window (ADWIN's idea, one window): for each, the mean
before minus the mean after, over the standard error of that difference if nothing had changed
(the whole window's variance; a per-side variance made 16 unlucky zeros in a row look certain);
the cut is the largest such statistic if it exceeds `z` and the drop is at least `min_drop`
(the signal's units). Scanning many cut points, at every update, is a multiple test, hence a large `z`.
"""
from __future__ import annotations

import numpy as np


def drop_cut(values: np.ndarray, z: float, min_drop: float, min_side: int = 16) -> int | None:
    """Index of the first value after a significant drop in `values` (oldest first), or None."""
    r = np.asarray(values, dtype=np.float64)
    n = len(r)
    if z <= 0 or n < 2 * min_side:
        return None
    cuts = np.arange(min_side, n - min_side + 1)
    total = np.concatenate([[0.0], np.cumsum(r)])
    n_b, n_a = cuts.astype(np.float64), (n - cuts).astype(np.float64)
    drop = total[cuts] / n_b - (total[n] - total[cuts]) / n_a
    se = np.sqrt(max(float(np.var(r)), 1e-6) * (1 / n_b + 1 / n_a))
    stat = np.where(drop >= min_drop, drop / se, -np.inf)
    best = int(np.argmax(stat))
    return int(cuts[best]) if stat[best] > z else None
