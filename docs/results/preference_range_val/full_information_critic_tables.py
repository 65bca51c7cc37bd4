"""Full-information quality tables for `full_information_critic_prototype.patch` (a feasibility check, session 33).

Writes qknn20.npy (each train prompt's mean true score over its 20 nearest other train prompts) and
qself.npy (its own true scores), rows in the order the bandit rounds index the train prompts.

    python docs/results/preference_range_val/full_information_critic_tables.py configs/llmrouter_val_balanced.yaml /tmp/an
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import numpy as np  # noqa: E402

from barp_ray.config import load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402

d = prepare(load_config(sys.argv[1]))
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
e, s = d.train_embeddings.astype(np.float32), d.train.scores.astype(np.float64)
sims = e @ e.T
np.fill_diagonal(sims, -np.inf)
top = np.argpartition(-sims, 19, axis=1)[:, :20]
np.save(out / "qknn20.npy", s[top].mean(1))
np.save(out / "qself.npy", s)
print(e.shape, s.shape)
