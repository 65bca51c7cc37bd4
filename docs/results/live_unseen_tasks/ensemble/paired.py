"""One policy against the three-member ensemble, served live on the same streams (session 45).

Reads pairs of `bench/live_unseen_tasks.py` JSONs (the same fold, seeds and stream, one per setting) and
prints each setting's sweep mean at the start, over the 16 evaluations from 250 to 4,000 rounds and at
4,000, with the paired per-seed difference (ensemble minus one policy).

    python docs/results/live_unseen_tasks/ensemble/paired.py fold1_single:fold1_ensemble fold2_oS:fold2_oSown3 fold3_oS:fold3_oSown3
"""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def sweep_means(label: str) -> np.ndarray:
    """[seeds, evaluations] the greedy routing's sweep-mean reward on the evaluation half."""
    runs = json.loads((HERE / f"{label}.json").read_text())["runs"]
    return np.array([r["curve"] for r in runs]).mean(axis=2)


def main() -> None:
    print("| fold | one policy: start / over the run / at 4,000 | ensemble | ensemble − one policy, over the run (seeds ahead) | at 4,000 |")
    print("| --- | --- | --- | --- | --- |")
    pooled = []
    for pair in sys.argv[1:]:
        single, ensemble = (sweep_means(x) for x in pair.split(":"))
        run, last = ensemble[:, 1:].mean(1) - single[:, 1:].mean(1), ensemble[:, -1] - single[:, -1]
        pooled.append(run)
        se = lambda d: d.std(ddof=1) / np.sqrt(len(d))  # noqa: E731
        print(f"| {pair.split(':')[0].split('_')[0]} | {single[:, 0].mean():.4f} / {single[:, 1:].mean():.4f} / {single[:, -1].mean():.4f} "
              f"| {ensemble[:, 0].mean():.4f} / {ensemble[:, 1:].mean():.4f} / {ensemble[:, -1].mean():.4f} "
              f"| {run.mean():+.4f} ± {se(run):.4f} ({(run > 0).sum()} of {len(run)}) | {last.mean():+.4f} ± {se(last):.4f} |")
    allruns = np.concatenate(pooled)
    print(f"pooled over the run: {allruns.mean():+.4f} ± {allruns.std(ddof=1) / np.sqrt(len(allruns)):.4f} ({(allruns > 0).sum()} of {len(allruns)} ahead)")


if __name__ == "__main__":
    main()
