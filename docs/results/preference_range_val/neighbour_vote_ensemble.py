"""Session 34's neighbour vote on top of the shipped in-distribution ensemble (session 50), twelve draws.

The vote routes a held-out prompt by the mean of the policy's log-probabilities over its k nearest train
prompts (cosine of h(x)), mixed with its own at weight `own`: kNN's locality applied to what the policy
learned, with no outcome read. It was measured on one policy (session 34, +0.0021 on six draws); the
ensemble (sessions 42-43) came after. Draws 0-5 choose the rule, draws 6-11 check it; kNN (the baseline
as `barp eval` fits it, k chosen on its own carve-out of the train draw) is scored on the same draws
for the counts. Checkpoints only: `screen_variants.py --seeds 0-11 --variant "pown3=$SH,$E"` first.

    python docs/results/preference_range_val/neighbour_vote_ensemble.py pown3 OUT.json   # ~5 min
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from neighbour_vote import log_probs  # noqa: E402  (this folder: session 34's rule, one policy)
from paired_sweep import draws  # noqa: E402  (this folder)

from barp_ray.evaluation.baselines.full_info import KNNRouter, TrainView  # noqa: E402
from barp_ray.evaluation.config import EvalConfig  # noqa: E402
from barp_ray.scoring import score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402

NEIGHBOURS = (10, 20, 50)
OWN = (0.0, 0.25, 0.5, 0.75)


def main() -> None:
    name, out = sys.argv[1], Path(sys.argv[2])
    rules = ["policy", *(f"k{k} own{o:g}" for k in NEIGHBOURS for o in OWN), "kNN"]
    per: dict[str, list[list[float]]] = {r: [] for r in rules}  # rule -> per draw -> per w_q
    seeds = []
    ev = EvalConfig()
    for seed, data, modules in draws([name]):
        seeds.append(seed)
        module = modules[name]
        dims = data.sentence_dim
        held_out = np.ascontiguousarray(data.test_embeddings[:, :dims], dtype=np.float32)
        train = np.ascontiguousarray(data.train_embeddings[:, :dims], dtype=np.float32)
        nearest = np.argsort(-(held_out @ train.T), axis=1)[:, :max(NEIGHBOURS)]
        view = TrainView.build(data.train_embeddings, data.train.scores, data.train.costs, data.tau, ev.validation_fraction, seed)
        knn = KNNRouter(ev.knn_k, dims=dims).fit(view, SWEEP)
        rows = {r: [] for r in rules}
        for w in SWEEP:
            score = lambda actions: score_actions(data.test, actions, w, data.tau).reward  # noqa: E731
            own, on_train = log_probs(module, held_out, w), log_probs(module, train, w)
            rows["policy"].append(score(own.argmax(-1)))
            for k in NEIGHBOURS:
                vote = on_train[nearest[:, :k]].mean(1)
                for o in OWN:
                    rows[f"k{k} own{o:g}"].append(score((o * own + (1 - o) * vote).argmax(-1)))
            rows["kNN"].append(score(knn.choose(data.test_embeddings, w).argmax(-1)))  # one-hot rows
        for r in rules:
            per[r].append(rows[r])
        print(f"draw {seed}: policy {np.mean(rows['policy']):.4f} kNN {np.mean(rows['kNN']):.4f} "
              f"best vote {max(np.mean(rows[r]) for r in rules[1:-1]):.4f}", flush=True)

    def summary(idx: list[int]) -> dict:
        arr = {r: np.asarray([per[r][i] for i in idx]) for r in rules}  # [draws, w_q]
        ref, knn = arr["policy"], arr["kNN"].mean(0)
        out = {}
        for r in rules:
            diff = arr[r].mean(1) - ref.mean(1)
            out[r] = {"sweep_mean": float(arr[r].mean()), "minus_policy": float(diff.mean()),
                      "se": float(diff.std(ddof=1) / np.sqrt(len(diff))), "draws_ahead": int((diff > 0).sum()),
                      "per_w_q": arr[r].mean(0).tolist(),
                      "at_least_knn": int((arr[r].mean(0) >= knn - 1e-12).sum())}
        return out

    choose = [i for i, s in enumerate(seeds) if s < 6]
    check = [i for i, s in enumerate(seeds) if s >= 6]
    result = {"command": " ".join(sys.argv), "seeds": seeds, "choose_draws_0_5": summary(choose)}
    if check:
        result["check_draws_6_11"] = summary(check)
        result["all"] = summary(list(range(len(seeds))))
    for part in [p for p in ("choose_draws_0_5", "check_draws_6_11", "all") if p in result]:
        print(f"\n{part}\n| rule | sweep | minus policy (± se) | ahead | ≥ kNN |\n| --- | --- | --- | --- | --- |")
        for r, s in result[part].items():
            print(f"| {r} | {s['sweep_mean']:.4f} | {s['minus_policy']:+.4f} ± {s['se']:.4f} | {s['draws_ahead']} | {s['at_least_knn']} |")
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
