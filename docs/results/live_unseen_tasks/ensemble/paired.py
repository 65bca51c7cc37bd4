"""One policy against the three-member ensemble, served live on the same streams (session 45).

Reads pairs of `bench/live_unseen_tasks.py` JSONs (the same fold, seeds and stream, one per setting) and
prints each setting's sweep mean at the start, over the 16 evaluations from 250 to 4,000 rounds and at
4,000, with the paired per-seed difference (ensemble minus one policy).

    python docs/results/live_unseen_tasks/ensemble/paired.py fold1_single:fold1_ensemble fold2_oS:fold2_oSown3 fold3_oS:fold3_oSown3

A label is a path relative to this folder without `.json`, so runs kept elsewhere pair with these
(session 46: `--names shipped "critic pull ramped" fold1_single:../critic_warmup/fold1_ramp250 ...`),
and `A+B` joins the runs of two files.
"""
import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def sweep_means(label: str) -> dict[int, np.ndarray]:
    """{seed: [evaluations]} the greedy routing's sweep-mean reward on the evaluation half; a label
    A+B reads the runs of both files (seeds 0-5 in one, 6-11 in another, session 47)."""
    runs = [r for part in label.split("+") for r in json.loads((HERE / f"{part}.json").read_text())["runs"]]
    return {r["seed"]: np.asarray(r["curve"]).mean(axis=1) for r in runs}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("pairs", nargs="+", help="FIRST:SECOND labels of runs on the same fold, seeds and stream")
    p.add_argument("--names", nargs=2, default=["one policy", "ensemble"], metavar=("FIRST", "SECOND"))
    args = p.parse_args()
    a, b = args.names
    print(f"| fold | {a}: start / over the run / at 4,000 | {b} | {b} − {a}, over the run (seeds ahead) | at 4,000 | over 250-1,000 (the early dip) |")
    print("| --- | --- | --- | --- | --- | --- |")
    pooled = []
    se = lambda d: d.std(ddof=1) / np.sqrt(len(d))  # noqa: E731
    for pair in args.pairs:
        runs = [sweep_means(x) for x in pair.split(":")]
        seeds = sorted(set(runs[0]) & set(runs[1]))  # a run on fewer seeds pairs with the other's same seeds
        first, second = (np.stack([r[s] for s in seeds]) for r in runs)
        run, last = second[:, 1:].mean(1) - first[:, 1:].mean(1), second[:, -1] - first[:, -1]
        early = second[:, 1:5].mean(1) - first[:, 1:5].mean(1)
        pooled.append(run)
        print(f"| {Path(pair.split(':')[0]).name.split('_')[0]} | {first[:, 0].mean():.4f} / {first[:, 1:].mean():.4f} / {first[:, -1].mean():.4f} "
              f"| {second[:, 0].mean():.4f} / {second[:, 1:].mean():.4f} / {second[:, -1].mean():.4f} "
              f"| {run.mean():+.4f} ± {se(run):.4f} ({(run > 0).sum()} of {len(run)}) | {last.mean():+.4f} ± {se(last):.4f} "
              f"| {early.mean():+.4f} ± {se(early):.4f} |")
    allruns = np.concatenate(pooled)
    print(f"pooled over the run: {allruns.mean():+.4f} ± {se(allruns):.4f} ({(allruns > 0).sum()} of {len(allruns)} ahead)")


if __name__ == "__main__":
    main()
