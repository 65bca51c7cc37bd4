"""BaRP variants and the full-information routers on the validation draws made with repeats
(`configs/llmrouter_val_repeats.yaml`): sweep reward over the 11 preferences on all held-out prompts,
on the repeated ones (also training prompts, as 119 of the test file's 500 are) and on the new ones,
and at how many preferences each variant is at or above kNN / the score MLP / the best-label router
(sweep means over the draws, as the issue counts on test). Checkpoints are runs/ablation/<name>/seed-s,
trained on draw s (`screen_variants.py --config configs/llmrouter_val_repeats.yaml`). A measurement
(session 40): the full-information routers are refitted per draw, ~2 min a draw here.

    python docs/results/preference_range_val/repeat_draws.py OUT.json 0-5 rC rCD
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from paired_sweep import ROOT, draws  # noqa: E402  (this folder)

from barp_ray.evaluation.config import EvalConfig  # noqa: E402
from barp_ray.evaluation.experiment import PolicyRouter, fit_offline  # noqa: E402
from barp_ray.evaluation.metrics import prompt_rewards  # noqa: E402
from barp_ray.policy import RoutingPolicy  # noqa: E402
from barp_ray.training.early_stopping import SWEEP  # noqa: E402

CONFIG = ROOT / "configs" / "llmrouter_val_repeats.yaml"
FULL_INFO = ("kNN", "score MLP", "best-label classifier")


def main() -> None:
    out, (first, last), names = Path(sys.argv[1]), (int(x) for x in sys.argv[2].split("-")), sys.argv[3:]
    per: dict[str, list] = {}  # name -> per draw [preferences, prompts] rewards
    repeated_masks = []
    for seed, data, _ in draws(names, CONFIG, range(first, last + 1)):
        repeated_masks.append(np.isin(data.test.prompts, data.train.prompts))
        routers = [*fit_offline(data, EvalConfig(), SWEEP, seed, progress=False),
                   *(PolicyRouter(RoutingPolicy.load(str(ROOT / "runs" / "ablation" / n / f"seed-{seed}")), n) for n in names)]
        for r in routers:
            per.setdefault(r.name, []).append(np.stack([
                prompt_rewards(data.test.scores, data.test.costs, r.choose(data.test_embeddings, w), w, data.tau) for w in SWEEP]))
        print(f"draw {seed}: " + ", ".join(f"{n} {per[n][-1].mean():.4f}" for n in per), flush=True)

    def sweep(name: str, part: str) -> np.ndarray:
        """[draws, preferences] mean reward over the draw's held-out prompts of that part."""
        masks = [np.ones_like(m) if part == "all" else (m if part == "repeated" else ~m) for m in repeated_masks]
        return np.stack([r[:, m].mean(1) for r, m in zip(per[name], masks)])

    result = {"config": str(CONFIG), "draws": list(range(first, last + 1)), "repeated_share": float(np.mean(repeated_masks)),
              "routers": {}}
    sweeps = {name: {part: sweep(name, part) for part in ("all", "repeated", "new")} for name in per}
    for name, parts in sweeps.items():
        entry = {part: {"sweep": float(s.mean()), "per_w_q": s.mean(0).tolist(), "per_draw": s.mean(1).tolist()}
                 for part, s in parts.items()}
        if name in names:
            mine = parts["all"].mean(0)
            entry["at_least"] = {f: int((mine >= sweeps[f]["all"].mean(0) - 1e-12).sum()) for f in FULL_INFO}
        result["routers"][name] = entry
        print(f"{name:24s} sweep all {entry['all']['sweep']:.4f}  repeated {entry['repeated']['sweep']:.4f}  "
              f"new {entry['new']['sweep']:.4f}" + (f"  >= kNN / MLP / best-label {entry['at_least']}" if name in names else ""))
    for name in names[1:]:
        d = sweeps[name]["all"].mean(1) - sweeps[names[0]]["all"].mean(1)
        print(f"{name} minus {names[0]}: {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}, ahead on {(d > 0).sum()}/{len(d)}")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
