"""Human-readable views of a derived results dict: a Markdown report and the cost–quality figure.

Reads only what `barp_ray.evaluation.results.derive` produced, so a report can be re-rendered from a saved
results.json without re-running anything (`write_report(load_results(path), folder)`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from barp_ray.evaluation.baselines.base import BANDIT, BARP, FULL_INFO, ORACLE, SINGLE

FAMILY_ORDER = (BARP, FULL_INFO, BANDIT, "reference", SINGLE, ORACLE)
MARKDOWN = "results.md"
FIGURE = "cost_quality.png"
JSON = "results.json"


def fmt_mean_std(ms, digits: int = 4, scale: float = 1.0, pct: bool = False) -> str:
    """'mean ± std' for a table cell; no '±' when every seed agreed; '—' for a target no seed reached."""
    mean, std = ms
    if mean is None or not math.isfinite(mean):
        return "—"
    if pct:
        return f"{mean * 100:+.1f} %" if abs(std) < 1e-12 else f"{mean * 100:+.1f} % ± {std * 100:.1f}"
    mean, std = mean * scale, std * scale
    return f"{mean:.{digits}f}" if abs(std) < 1e-12 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def ordered(res: dict) -> list[str]:
    """BaRP first, then full-information routers, bandit baselines, references, single models, oracle."""
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(res["routers"], key=lambda n: (rank.get(res["routers"][n]["family"], 99), n.lower()))


def _w(w) -> str:
    return f"({w[0]:g}, {w[1]:g})"


def markdown(res: dict, command: str | None = None) -> str:
    d, routers, prefs = res["data"], res["routers"], res["preferences"]
    w0 = res["default_preference"]
    di = [tuple(p) for p in prefs].index(tuple(w0))
    names = ordered(res)
    held = f", held-out tasks {d['held_out_tasks']}" if d["split"] == "tasks" else ""
    lines = [
        f"# BaRP against baselines: {res['name']}",
        "",
        f"- **Data**: `{d['source']}` from `{d['path']}`, split `{d['split']}`{held}: {d['train_prompts']} train / "
        f"{d['test_prompts']} test prompts; test tasks {', '.join(f'{t} ({n})' for t, n in d['test_tasks'].items())}.",
        f"- **Models**: {len(d['models'])}; largest model = `{d['largest_model']}` ({d['largest_model_rule']}).",
        f"- **Reward** r = w_q·q − w_c·min(c/τ, 1), τ = ${d['tau']:.6g} per query.",
        f"- **Cost**: {d['cost_note']}.",
        f"- **Seeds**: {len(res['seeds'])} (BaRP trained once per seed; every learned baseline re-fitted per seed); "
        "figures are mean ± sample std over seeds (no ± where all seeds agree).",
        f"- **Default preference** w = {_w(w0)} (from the config's `env.eval_preference`); the BaRP paper's exact "
        "default preference is not verified here.",
        f"- **Bandit baselines** play {res['bandit_rounds']:,} rounds of the same environment as BaRP "
        "(partial feedback); **full-information** routers read every model's score on every training prompt.",
    ]
    if d.get("test_prompts_also_in_train"):
        lines.append(
            f"- **Overlap**: {d['test_prompts_also_in_train']} test prompt texts also appear, verbatim, among the train "
            "prompts (a property of the data); the last table repeats the comparison on the test prompts that do not."
        )
    if command:
        lines.append(f"- **Command**: `{command}`")
    lines += ["", "![cost-quality plane](cost_quality.png)", ""]

    s = res["summary"]
    lines += [
        f"## Summary at w = {_w(w0)}",
        "",
        "Relative difference = (BaRP − other) / |other|, per seed, then mean ± std.",
        "",
        "| BaRP vs | other router | BaRP reward | other reward | relative (reward) | BaRP score | other score | relative (score) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    labels = {
        "best_full_information_router": "best full-information router (chosen on test, per seed)",
        "largest_model": "largest model",
        "best_single_model": "best single model (on test)",
        "best_bandit_baseline": "best bandit baseline (on test, per seed)",
    }
    for key, label in labels.items():
        if key not in s:
            continue
        row = s[key]
        who = ", ".join(sorted(set(row["router_per_seed"])))
        r, q = row["reward"], row["quality"]
        lines.append(
            f"| {label} | {who} | {fmt_mean_std(r['barp'])} | {fmt_mean_std(r['theirs'])} | {fmt_mean_std(r['relative'], pct=True)} | "
            f"{fmt_mean_std(q['barp'])} | {fmt_mean_std(q['theirs'])} | {fmt_mean_std(q['relative'], pct=True)} |"
        )
    lines += ["", *_dominance_lines(res), ""]
    if res.get("paired"):
        lines += [*_paired_lines(res), ""]

    lines += [
        f"## Every router at w = {_w(w0)}",
        "",
        "AIQ: mean quality of the router's non-decreasing cost–quality hull over the cost range of the single "
        f"models (${res['cost_range'][0] * 1000:.4f} to ${res['cost_range'][1] * 1000:.4f} per 1k queries). "
        "Cost to x % gap: $ per 1k queries at which the hull first reaches the cheapest model's score plus x % of the "
        f"way to the best single model's score ({res['gap_targets']['0.5']:.4f} and {res['gap_targets']['0.8']:.4f}); "
        "— means never reached (mean over the seeds that reached it otherwise). Fixed routers are single points.",
        "",
        "| router | trained with | reward | score | $ / 1k queries | AIQ | $ / 1k to 50 % gap | $ / 1k to 80 % gap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    n_seeds = len(res["seeds"])
    for n in names:
        st = routers[n]["stats"]
        lines.append(
            f"| {n} | {routers[n]['family']} | {fmt_mean_std(st['reward'][di])} | {fmt_mean_std(st['quality'][di])} | "
            f"{fmt_mean_std(st['cost'][di], scale=1000)} | {fmt_mean_std(st['aiq'])} | {_reach(st, 50, n_seeds)} | "
            f"{_reach(st, 80, n_seeds)} |"
        )

    lines += [
        "",
        "## Preference sweep: mean reward at each w_q (w_c = 1 − w_q)",
        "",
        "One BaRP policy per seed serves every column; the bold entry is the best non-oracle router in the column.",
        "",
        "| router | " + " | ".join(f"{w[0]:g}" + (" (default)" if i == di else "") for i, w in enumerate(prefs)) + " |",
        "| --- |" + " --- |" * len(prefs),
    ]
    sweep = {n: [m for m, _ in routers[n]["stats"]["reward"]] for n in names}
    best = [max(sweep[n][i] for n in names if routers[n]["family"] != ORACLE) for i in range(len(prefs))]
    for n in names:
        cells = [f"**{v:.4f}**" if routers[n]["family"] != ORACLE and v >= best[i] - 1e-12 else f"{v:.4f}" for i, v in enumerate(sweep[n])]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")

    tasks = list(routers["BaRP"]["stats"]["per_task"])
    lines += [
        "",
        f"## Per task at w = {_w(w0)}: mean reward (mean score, cost: see results.json)",
        "",
        "| router | " + " | ".join(f"{t} ({d['test_tasks'].get(t, '')})" for t in tasks) + " |",
        "| --- |" + " --- |" * len(tasks),
    ]
    for n in names:
        pt = routers[n]["stats"]["per_task"]
        lines.append(f"| {n} | " + " | ".join(f"{pt[t]['reward'][0]:.3f}" for t in tasks) + " |")

    if all("unseen" in routers[n]["stats"] for n in names):
        k = d["test_prompts"] - d["test_prompts_also_in_train"]
        lines += [
            "",
            f"## Test prompts not in train ({k} of {d['test_prompts']}) at w = {_w(w0)}",
            "",
            "| router | reward | score | $ / 1k queries |",
            "| --- | --- | --- | --- |",
        ]
        for n in names:
            u = routers[n]["stats"]["unseen"]
            lines.append(f"| {n} | {fmt_mean_std(u['reward'])} | {fmt_mean_std(u['quality'])} | {fmt_mean_std(u['cost'], scale=1000)} |")
    return "\n".join(lines) + "\n"


def _reach(stats: dict, pct: int, n_seeds: int) -> str:
    """Cost to a gap target; says how many seeds got there when only some did."""
    cell = fmt_mean_std(stats[f"cost_to_{pct}"], scale=1000)
    k = stats[f"reached_{pct}"]
    return cell if k in (0, n_seeds) else f"{cell} ({k}/{n_seeds} seeds)"


def _dominance_lines(res: dict) -> list[str]:
    """Verdict plus one row per learned baseline: where BaRP's sweep is at least as good, by reward and by hull."""
    dom, routers = res["dominance"], res["routers"]
    full = {n: v for n, v in dom.items() if v["family"] == FULL_INFO}
    verdict = all(v["reward_wins"] == v["preferences"] and v["hull_fraction"] >= 1.0 for v in full.values())
    lines = [
        "**BaRP's sweep dominates every full-information router's curve** (mean over seeds)."
        if verdict
        else "**BaRP's sweep does not dominate every full-information router's curve** (mean over seeds).",
        "",
        "| other router | trained with | BaRP reward ≥ other at | other is better at w_q | BaRP hull ≥ other's on | AIQ BaRP / other |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    barp_aiq = routers["BaRP"]["stats"]["aiq"][0]
    for n, v in dom.items():
        loses = ", ".join(f"{w:g}" for w in v["loses_at_wq"]) or "none"
        lines.append(
            f"| {n} | {v['family']} | {v['reward_wins']}/{v['preferences']} preferences | {loses} | "
            f"{v['hull_fraction'] * 100:.0f} % of the cost range | {barp_aiq:.4f} / {routers[n]['stats']['aiq'][0]:.4f} |"
        )
    return lines


def _picks(models: list[str], prefs: list) -> str:
    """'a at w_q 0-0.3, b at 0.4-1': consecutive preferences with the same pick as one range."""
    runs: list[list] = []
    for m, w in zip(models, prefs):
        if runs and runs[-1][0] == m:
            runs[-1][2] = w[0]
        else:
            runs.append([m, w[0], w[0]])
    return ", ".join(f"`{m}` at {'w_q ' if i == 0 else ''}{a:g}" + (f"–{b:g}" if b != a else "") for i, (m, a, b) in enumerate(runs))


def _paired_lines(res: dict) -> list[str]:
    """BaRP − other per preference with a paired bootstrap interval over the test prompts; ↑ / ↓ mark
    an interval entirely above / below 0, the differences the test prompts can tell apart."""
    paired, prefs = res["paired"], res["preferences"]
    level = next(iter(paired.values()))["level"]
    lines = [
        f"**Paired over the test prompts** ({res['data']['test_prompts']} prompts, {level:.0%} bootstrap interval of "
        "BaRP − other per prompt, seeds averaged; ↑ / ↓: the interval lies above / below 0; the best single model is "
        "chosen per column on these prompts, the one chosen on train by its mean train reward at that preference"
        + (f": {_picks(res['best_single_on_train'], prefs)}" if res.get("best_single_on_train") else "")
        + "). A mean difference without a mark is within what the test set can resolve.",
        "",
        "| BaRP − | " + " | ".join(f"{w[0]:g}" for w in prefs) + " | BaRP worse at w_q (↓) | BaRP better at w_q (↑) |",
        "| --- |" + " --- |" * (len(prefs) + 2),
    ]
    for name, p in paired.items():
        cells, worse, better = [], [], []
        for w, m, lo, hi in zip(prefs, p["mean"], p["low"], p["high"]):
            mark = ""
            if hi < 0:
                mark = "↓"
                worse.append(f"{w[0]:g}")
            elif lo > 0:
                mark = "↑"
                better.append(f"{w[0]:g}")
            cells.append(f"{m:+.4f}{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(worse) or 'none'} | {', '.join(better) or 'none'} |")
    return lines


def figure(res: dict, path: str | Path) -> Path:
    """Left: the cost–quality plane (log cost; curves for routers with a knob, points for fixed ones).
    Right: each router's reward minus the best single model's at every w. One legend for both, below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routers, prefs = res["routers"], res["preferences"]
    w0 = res["default_preference"]
    di = [tuple(p) for p in prefs].index(tuple(w0))
    wq = np.asarray([p[0] for p in prefs])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, 7.4), gridspec_kw={"width_ratios": [1.3, 1]})
    styles = {BARP: dict(ls="-", lw=2.6, ms=6, marker="o", zorder=5), FULL_INFO: dict(ls="--", lw=1.6, marker="s", ms=4),
              BANDIT: dict(ls=":", lw=1.8, marker="^", ms=4), ORACLE: dict(ls="-.", lw=1.2, marker=".", ms=4)}
    colors = iter(plt.get_cmap("tab10").colors)
    singles = {"x": [], "y": [], "names": []}
    best_single = np.max([[m for m, _ in routers[n]["stats"]["reward"]] for n in routers if routers[n]["family"] == SINGLE], axis=0)
    for n in ordered(res):
        e = routers[n]
        st = e["stats"]
        x = np.asarray([m for m, _ in st["cost"]]) * 1000
        y = np.asarray([m for m, _ in st["quality"]])
        gain = np.asarray([m for m, _ in st["reward"]]) - best_single
        if e["family"] == SINGLE:
            singles["x"].append(x[0]), singles["y"].append(y[0]), singles["names"].append(n)
            continue
        if not e["tracks_preference"]:
            ax.scatter(x[0], y[0], marker="X", s=80, color="grey", label=f"{n} ({e['family']})", zorder=4)
            bx.plot(wq, gain, color="grey", ls="--", lw=1)
            continue
        c = "black" if n == "BaRP" else ("grey" if e["family"] == ORACLE else next(colors))
        order = np.argsort(x)
        ax.plot(x[order], y[order], color=c, label=f"{n} ({e['family']})", **styles.get(e["family"], {}))
        bx.plot(wq, gain, color=c, **styles.get(e["family"], {}))
        if n == "BaRP":  # the run's BaRP; compared heads (eval.compare_heads) are plain lines in BaRP's style
            ax.scatter(x[di], y[di], marker="*", s=420, color="gold", edgecolor="black", zorder=6,
                       label=f"BaRP at the default w = ({w0[0]:g}, {w0[1]:g})")
            bx.scatter(wq[di], gain[di], marker="*", s=300, color="gold", edgecolor="black", zorder=6)
            for i, offset in ((0, (10, -14)), (len(wq) - 1, (-10, 10))):
                ax.annotate(f"w_q={wq[i]:g}", (x[i], y[i]), textcoords="offset points", xytext=offset, fontsize=8,
                            ha="left" if offset[0] > 0 else "right")
    ax.scatter(singles["x"], singles["y"], marker="D", s=40, color="tab:brown", label="single models", zorder=4)
    _label_points(ax, singles["x"], singles["y"], singles["names"])
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("mean cost, $ per 1k queries (log scale)")
    ax.set_ylabel("mean score (quality)")
    ax.set_title(f"Cost–quality plane: {res['name']}, test prompts, mean of {len(res['seeds'])} seed(s)", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    bx.axhline(0, color="tab:brown", lw=1)
    bx.axvline(w0[0], color="gold", lw=2, alpha=0.8)
    bx.set_xlabel("w_q  (w_c = 1 − w_q)")
    bx.set_ylabel("mean reward − best single model's reward at that w")
    bx.set_title("Reward gained over the best fixed model, per preference", fontsize=11)
    bx.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _label_points(ax, xs, ys, names) -> None:
    """Short labels next to single-model points; stacked when several models share a point."""
    seen: dict[tuple, int] = {}
    for x, y, n in zip(xs, ys, names):
        key = (round(x, 6), round(y, 2))
        k = seen.get(key, 0)
        seen[key] = k + 1
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4 + 9 * k), fontsize=7, color="tab:brown")


def write_report(res: dict, folder: str | Path, command: str | None = None) -> dict[str, Path]:
    """results.json + results.md + cost_quality.png in `folder`."""
    from barp_ray.evaluation.results import save_results

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if command:
        res = {**res, "command": command}
    paths = {"json": save_results(res, folder / JSON)}
    (folder / MARKDOWN).write_text(markdown(res, command or res.get("command")))
    paths["markdown"] = folder / MARKDOWN
    paths["figure"] = figure(res, folder / FIGURE)
    return paths
