"""Does each test task look, and score, like the train file's task of the same name? A data check.

Why: a router's settings are chosen on validation draws from the train file, so a test task whose
prompts take another form than in train (found: LLMRouter's mmlu, long passages in train, short
questions in test) is a shift no validation draw shows. Two views per test task:
- inputs only (what a deployment sees of its traffic): the median prompt length in train and test,
  and the share of each test prompt's 10 nearest train prompts (cosine on h(x)) from the same task,
  with the task those neighbours most often come from;
- outcomes (only an offline test file has them): each model's mean score in train and in test, the
  best model by mean score in each, and the model whose test score its prompts' nearest train
  prompts misjudge most (their mean train score, what a router that follows neighbours expects,
  against the test score).
No router is trained or scored; nothing here chooses a setting.

    python bench/task_shift.py --config configs/llmrouter.yaml --out docs/results/task_shift   # ~10 s
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

NEIGHBOURS = 10


def nearest_train_prompts(test_emb: np.ndarray, train_emb: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """[n_test, NEIGHBOURS] row indices of each test prompt's nearest train prompts."""
    out = []
    for i in range(0, len(test_emb), chunk):
        sims = test_emb[i:i + chunk] @ train_emb.T
        out.append(np.argsort(-sims, axis=1)[:, :NEIGHBOURS])
    return np.concatenate(out)


def task_rows(train, test, train_emb: np.ndarray, test_emb: np.ndarray) -> list[dict]:
    models = list(train.models)
    train_tasks, test_tasks = np.asarray(train.tasks), np.asarray(test.tasks)
    train_len = np.asarray([len(p) for p in train.prompts])
    test_len = np.asarray([len(p) for p in test.prompts])
    near_rows = nearest_train_prompts(test_emb, train_emb)
    near = train_tasks[near_rows]
    rows = []
    for task in test.task_names():
        te, tr = test_tasks == task, train_tasks == task
        mix = Counter(near[te].ravel().tolist())
        row = {
            "task": task, "test_prompts": int(te.sum()), "train_prompts": int(tr.sum()),
            "median_chars_train": float(np.median(train_len[tr])) if tr.any() else None,
            "median_chars_test": float(np.median(test_len[te])),
            "own_task_neighbour_share": mix[task] / (NEIGHBOURS * te.sum()),
            "most_common_neighbour_task": mix.most_common(1)[0][0],
            "mean_score_test": dict(zip(models, test.scores[te].mean(0).round(4).tolist())),
            "best_model_test": models[int(np.argmax(test.scores[te].mean(0)))],
        }
        expected, actual = train.scores[near_rows[te]].mean((0, 1)), test.scores[te].mean(0)
        miss = int(np.argmax(np.abs(expected - actual)))
        row["largest_neighbour_miss"] = {"model": models[miss], "neighbours": round(float(expected[miss]), 3), "test": round(float(actual[miss]), 3)}
        if tr.any():
            s_tr = train.scores[tr].mean(0)
            row.update({
                "mean_score_train": dict(zip(models, s_tr.round(4).tolist())),
                "best_model_train": models[int(np.argmax(s_tr))],
            })
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| test task | prompts train / test | median chars train / test | own task among 10 nearest train prompts "
          "| most common neighbour task | best model by mean score, train / test "
          "| model the neighbours misjudge most: their mean train score → its test score |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        miss = r["largest_neighbour_miss"]
        chars = f"{r['median_chars_train']:.0f} / {r['median_chars_test']:.0f}" if r["median_chars_train"] is not None else f"— / {r['median_chars_test']:.0f}"
        best = f"{r['best_model_train']} / {r['best_model_test']}" if "best_model_train" in r else f"not in train / {r['best_model_test']}"
        change = f"{miss['model']} {miss['neighbours']:.2f} → {miss['test']:.2f}"
        print(f"| {r['task']} | {r['train_prompts']} / {r['test_prompts']} | {chars} | {100 * r['own_task_neighbour_share']:.0f} % "
              f"| {r['most_common_neighbour_task']} | {best} | {change} |")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    shares = [100 * r["own_task_neighbour_share"] for r in rows]
    ax.barh([r["task"] for r in rows], shares, color=["tab:red" if s < 50 else "tab:blue" for s in shares])
    ax.set_xlabel(f"test prompts' {NEIGHBOURS} nearest train prompts from the same task (%)")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    from barp_ray.config import ConfigError, load_config
    from barp_ray.data.prepare import prepare

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/llmrouter.yaml")
    p.add_argument("--out", type=Path, default=Path("docs/results/task_shift"))
    args = p.parse_args()
    try:
        cfg = load_config(args.config)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = prepare(cfg, progress=False)
    rows = task_rows(data.train, data.test, data.train_embeddings, data.test_embeddings)
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "task_shift.json").write_text(json.dumps({"config": args.config, "neighbours": NEIGHBOURS, "tasks": rows}, indent=1))
    plot(rows, args.out / "task_shift.png")
    print(f"wrote {args.out}/task_shift.json and task_shift.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
