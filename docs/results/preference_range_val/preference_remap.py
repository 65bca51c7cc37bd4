"""A decision-time remap of the preference (session 50), chosen on six validation draws and checked on six more.

Session 31 found the policy miscalibrated in w at w_q 0.4: asked at 0.3 there it routed better, but "a remap
fitted on one draw would fit that draw's noise". With twelve task-balanced draws that can be tested: the
shipped ensemble (`pown3`) decides at w_q' = w_q ** gamma (one parameter; 0 and 1 stay put), or at w_q + δ
with a δ per sweep point, chosen on draws 0-5 and scored on draws 6-11. Rewards are always scored at the
true w. Checkpoints only: `screen_variants.py --seeds 0-11 --variant "pown3=$SH,$E"` first.

    python docs/results/preference_range_val/preference_remap.py pown3 OUT.json   # ~1 min
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from paired_sweep import draws  # noqa: E402  (this folder)

from barp_ray.scoring import greedy_actions, score_actions  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402

GAMMAS = (0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
DELTAS = (-0.1, -0.075, -0.05, -0.025, 0.0, 0.025, 0.05)


def main() -> None:
    name, out = sys.argv[1], Path(sys.argv[2])
    asked = sorted({round(min(max(w[0] ** g, 0.0), 1.0), 6) for w in SWEEP for g in GAMMAS}
                   | {round(min(max(w[0] + d, 0.0), 1.0), 6) for w in SWEEP for d in DELTAS})
    seeds, table = [], []  # table[draw][true w index][asked w_q] = reward at the true w
    for seed, data, modules in draws([name]):
        seeds.append(seed)
        module = modules[name]
        actions = {a: greedy_actions(module, data.test_embeddings, (a, 1.0 - a)) for a in asked}
        table.append([{a: score_actions(data.test, actions[a], w, data.tau).reward for a in asked} for w in SWEEP])
        print(f"draw {seed} scored", flush=True)

    def reward(idx, rule) -> np.ndarray:
        """[draws, w] reward when each true w_q is asked at rule(i, w_q)."""
        return np.asarray([[table[d][i][round(min(max(rule(i, w[0]), 0.0), 1.0), 6)] for i, w in enumerate(SWEEP)] for d in idx])

    choose = [i for i, s in enumerate(seeds) if s < 6]
    check = [i for i, s in enumerate(seeds) if s >= 6]
    identity = lambda i, q: q  # noqa: E731
    by_gamma = {g: reward(choose, lambda i, q, g=g: q ** g).mean() for g in GAMMAS}
    gamma = max(by_gamma, key=by_gamma.get)
    deltas = [max(DELTAS, key=lambda d, i=i: reward(choose, lambda j, q: q + (d if j == i else 0.0))[:, i].mean())
              for i in range(len(SWEEP))]
    rules = {"asked at the true w": identity, f"w_q ** {gamma:g} (chosen)": lambda i, q: q ** gamma,
             "w_q + δ per point (chosen)": lambda i, q: q + deltas[i]}
    result = {"command": " ".join(sys.argv), "seeds": seeds, "gamma_on_draws_0_5": {str(g): float(v) for g, v in by_gamma.items()},
              "gamma": gamma, "deltas": deltas, "rules": {}}
    base = {part: reward(idx, identity) for part, idx in (("choose", choose), ("check", check))}
    print("| rule | draws 0-5: sweep, minus asked at w (± se), ahead | draws 6-11 |\n| --- | --- | --- |")
    for label, rule in rules.items():
        row = {}
        for part, idx in (("choose", choose), ("check", check)):
            r = reward(idx, rule)
            diff = r.mean(1) - base[part].mean(1)
            row[part] = {"sweep_mean": float(r.mean()), "minus_true_w": float(diff.mean()),
                         "se": float(diff.std(ddof=1) / np.sqrt(len(diff))), "ahead": int((diff > 1e-12).sum()),
                         "per_w_q_difference": (r - base[part]).mean(0).tolist()}
        result["rules"][label] = row
        c, k = row["choose"], row["check"]
        print(f"| {label} | {c['sweep_mean']:.4f}, {c['minus_true_w']:+.4f} ± {c['se']:.4f}, {c['ahead']} | "
              f"{k['sweep_mean']:.4f}, {k['minus_true_w']:+.4f} ± {k['se']:.4f}, {k['ahead']} |")
    print("gamma by draws 0-5:", {g: round(v, 4) for g, v in by_gamma.items()}, "deltas:", deltas)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
