"""How many held-out prompts are train prompts asked again: the LLMRouter test file against the train
file, and task-balanced validation draws against the rest of the train file (MiniLM cosine similarity
to the nearest training prompt). For the test file's repeats, how often the nine models' scores agree
with the train copy's: a fact about the data, read after the fact; it sets nothing (session 40).

    python docs/results/preference_range_val/test_file_repeats.py   # ~1 min
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from barp_ray.config import apply_overrides, load_config  # noqa: E402
from barp_ray.data.prepare import prepare  # noqa: E402


def nearest(train: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each held-out prompt's nearest training prompt: (index, cosine similarity)."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sims = unit(np.asarray(held)) @ unit(np.asarray(train)).T
    return sims.argmax(1), sims.max(1)


def main() -> None:
    sets = [("test file", load_config(ROOT / "configs" / "llmrouter.yaml"))]
    for name in ("balanced", "repeats"):
        for draw in (0, 1, 2):
            sets.append((f"{name} draw {draw}", apply_overrides(load_config(ROOT / "configs" / f"llmrouter_val_{name}.yaml"),
                                                                 [f"data.seed={draw}"])))
    for name, cfg in sets:
        data = prepare(cfg, progress=False)
        index, sim = nearest(data.train_embeddings, data.test_embeddings)
        copy = sim > 0.999
        tasks = data.test.tasks.astype(str)
        line = (f"{name}: {data.test.n} held out, nearest-train similarity median {np.median(sim):.3f}, "
                f"copies in training {copy.mean():.1%} {dict((str(t), int((copy & (tasks == t)).sum())) for t in sorted(set(tasks[copy])))}")
        if name == "test file" and copy.any():
            agree = data.test.scores[copy] == data.train.scores[index[copy]]
            line += f"; their scores agree with the train copy's at {agree.mean():.0%}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
