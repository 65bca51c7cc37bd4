"""Can a parametric router reach kNN on the six validation draws (0-5)? The full-information score MLP
(every model's score on every train prompt, BCE, early stopping on a 10 % carve-out, as
`barp_ray.evaluation.baselines.full_info.ScoreMLPRouter`) with other widths and dropout. If no MLP on
h(x) reaches kNN, BaRP's network cannot either; if dropout gets one there, BaRP's nets are worth
trying with it. A measurement (session 39); nothing here is shipped.

    python docs/results/preference_range_val/full_information_mlp_dropout.py   # ~5 min
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from paired_sweep import draws  # noqa: E402  (this folder)

from barp_ray.evaluation.baselines.full_info import KNNRouter, TrainView  # noqa: E402
from barp_ray.scoring import score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402

# name: (hidden sizes, dropout on h(x), dropout after each hidden layer, weight decay)
VARIANTS = {
    "[256], no dropout (the shipped baseline's net)": ([256], 0.0, 0.0, 1e-5),
    "[512], dropout 0.5 on h(x) and hidden": ([512], 0.5, 0.5, 1e-4),
    "[512], dropout 0.5 on h(x) only": ([512], 0.5, 0.0, 1e-4),
    "[512], dropout 0.5 on hidden only": ([512], 0.0, 0.5, 1e-4),
    "[256, 128], dropout 0.5 on h(x) and hidden": ([256, 128], 0.5, 0.5, 1e-4),
    "[128], dropout 0.5 on h(x) and hidden": ([128], 0.5, 0.5, 1e-4),
    "[1024], dropout 0.3 on h(x) and hidden": ([1024], 0.3, 0.3, 1e-5),
}


def fit(x_fit, y_fit, x_val, y_val, hidden, input_drop, hidden_drop, weight_decay, seed):
    torch.manual_seed(seed)
    layers, width = [nn.Dropout(input_drop)], x_fit.shape[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(hidden_drop)]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, y_fit.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best, state, since = float("inf"), None, 0
    for _ in range(300):
        net.train()
        perm = torch.randperm(len(x_fit), generator=gen)
        for i in range(0, len(x_fit), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(net(x_fit[idx]), y_fit[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = float(F.binary_cross_entropy_with_logits(net(x_val), y_val))
        if v < best - 1e-6:
            best, since, state = v, 0, {k: t.clone() for k, t in net.state_dict().items()}
        else:
            since += 1
            if since >= 10:
                break
    net.load_state_dict(state)
    return net.eval()


def main() -> None:
    torch.set_num_threads(2)
    per = {n: [] for n in [*VARIANTS, "kNN"]}
    for seed, data, _ in draws(["vs_shipped"]):
        if seed > 5:
            break
        view = TrainView.build(data.train_embeddings, data.train.scores, data.train.costs, data.tau, 0.1, seed)
        cost_hat = view.mean_normalized_cost()
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))
        fit_rows, val_rows = view.fit_index, view.val_index

        def sweep(q_hat):
            return [score_actions(data.test, (w[0] * q_hat - w[1] * cost_hat).argmax(1), w, data.tau).reward for w in SWEEP]

        for name, (hidden, input_drop, hidden_drop, wd) in VARIANTS.items():
            net = fit(t(view.embeddings[fit_rows]), t(view.scores[fit_rows]), t(view.embeddings[val_rows]),
                      t(view.scores[val_rows]), hidden, input_drop, hidden_drop, wd, seed)
            with torch.no_grad():
                per[name].append(sweep(torch.sigmoid(net(t(data.test_embeddings))).numpy()))
        per["kNN"].append(sweep(KNNRouter().fit(view, SWEEP).predict_scores(data.test_embeddings)))
        print(f"draw {seed}: " + ", ".join(f"{np.mean(r[-1]):.4f}" for r in per.values()), flush=True)
    knn = np.asarray(per["kNN"])
    summary = {}
    for name, rows in per.items():
        r = np.asarray(rows)
        d = r.mean(1) - knn.mean(1)
        summary[name] = {"sweep": float(r.mean()), "minus_knn": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))),
                         "at_least_knn": int((r.mean(0) >= knn.mean(0)).sum()), "per_w_q": r.mean(0).tolist()}
        print(f"{name:46s} sweep {r.mean():.4f}, minus kNN {d.mean():+.4f} ± {summary[name]['se']:.4f}, "
              f">= kNN at {summary[name]['at_least_knn']}/11")
    out = Path(__file__).with_name("full_information_mlp_dropout_6draws.json")
    out.write_text(json.dumps({"summary": summary, "per_draw_reward": per}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
