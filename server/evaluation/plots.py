"""The report's PNG plots, one function per plot (matplotlib, imported only when plotting):
`accuracy.png`, `ci.png`, `regret.png`, `rm_share.png`, `spread.png` (see `report.py`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from laser.server.evaluation.labels import label, ordered

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_all(report: dict[str, Any], out: Path) -> list[str]:
    """Every plot into `out`; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, Callable[[dict[str, Any]], Figure]] = {
        "accuracy.png": _accuracy,
        "ci.png": _laser_minus_baselines,
        "regret.png": _regret,
        "rm_share.png": _rm_share,
    }
    if report["strategies"]["laser"].get("spread") and report.get("rules"):
        plots["spread.png"] = _spread
    written = []
    for name, plot in plots.items():
        fig = plot(report)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(name)
    return written


def _spread(report: dict[str, Any]) -> Figure:
    """What one deployment gets: each learning rule's held-out headline mean per ordering of
    the stream (min, 10th percentile, median, max), against the fixed baselines."""
    import matplotlib.pyplot as plt

    rules = report["rules"]
    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=90)
    names = list(rules)
    for k, name in enumerate(names):
        h = rules[name]["heldout"]
        ax.plot([h["min"], h["max"]], [k, k], color="0.6", lw=1)
        ax.plot([h["p10"], h["median"]], [k, k], color="tab:blue", lw=5, solid_capstyle="butt")
        ax.plot(h["mean"], k, "k|", ms=12)
    s = report["strategies"]
    colours = {"best_single": "tab:red", "ensemble_mean": "tab:green", "ensemble_vote": "tab:olive"}
    for n, c in colours.items():
        ax.axvline(
            s[n]["heldout"], color=c, ls="--", lw=1, label=label(n, report["chosen_on_stream"])
        )
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(
        "held-out headline mean over orderings (grey: min-max, blue: p10-median, |: mean)"
    )
    ax.set_title("One deployment per ordering of the stream: LASeR learning rules")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def _accuracy(report: dict[str, Any]) -> Figure:
    """Held-out results per task and headline mean, grouped bars per strategy."""
    import matplotlib.pyplot as plt

    s, tasks = report["strategies"], list(report["tasks"])
    chosen = report["chosen_on_stream"]
    cmap = plt.get_cmap("tab20")
    names = [n for n in ordered(list(s)) if not n.startswith("rm:")]
    groups = [*tasks, "headline mean"]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(groups) + 1), 5.0), dpi=90)
    width = 0.8 / len(names)
    for k, n in enumerate(names):
        vals = [s[n]["per_task"].get(t, 0.0) for t in tasks] + [s[n]["heldout"]]
        xs = np.arange(len(groups)) + (k - (len(names) - 1) / 2) * width
        ax.bar(xs, vals, width, label=label(n, chosen), color=cmap(k % 20))
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("held-out accuracy / F1")
    ax.set_ylim(0, 1)
    ax.set_title("Best-of-n on the held-out split, by RM-selection strategy")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    return fig


def _laser_minus_baselines(report: dict[str, Any]) -> Figure:
    """LASeR minus each baseline with its 95% interval: green above 0, red below."""
    import matplotlib.pyplot as plt

    s, ci, chosen = report["strategies"], report["ci"], report["chosen_on_stream"]
    rows = [n for n in ordered(list(ci)) if n in s]
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(rows) + 1.5), dpi=90)
    for k, n in enumerate(rows):
        c = ci[n]
        color = "tab:green" if c["lo"] > 0 else ("tab:red" if c["hi"] < 0 else "tab:grey")
        ax.errorbar(
            100 * c["diff"],
            k,
            xerr=[[100 * (c["diff"] - c["lo"])], [100 * (c["hi"] - c["diff"])]],
            fmt="o",
            color=color,
            capsize=3,
        )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [label(n, chosen) for n in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("LASeR minus baseline, points (paired bootstrap 95% CI)")
    ax.set_title("LASeR against each baseline, held-out headline tasks")
    return fig


def _regret(report: dict[str, Any]) -> Figure:
    """Cumulative regret along the stream against the best RM per task."""
    import matplotlib.pyplot as plt

    chosen = report["chosen_on_stream"]
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for k, (n, curve) in enumerate(report["regret"].items()):
        ax.plot(np.arange(1, len(curve) + 1), curve, label=label(n, chosen), color=cmap(2 * k))
    ax.set_xlabel("stream step")
    ax.set_ylabel("cumulative regret vs best RM per task")
    ax.set_title("Regret along the stream (mean over orderings)")
    ax.legend(fontsize=7)
    return fig


def _rm_share(report: dict[str, Any]) -> Figure:
    """LASeR's RM choice per task as the stream goes on: one stacked area plot per task."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    sh = report["shares_over_time"]
    by_task = sh["by_task"]
    fig, axes = plt.subplots(1, len(by_task), figsize=(3.2 * len(by_task), 3.2), dpi=90)
    axes = np.atleast_1d(axes)
    for ax, (task, per_rm) in zip(axes, by_task.items(), strict=True):
        first = next(iter(per_rm.values()))
        xs = (np.arange(len(first)) + 0.5) * sh["window"]
        ax.stackplot(
            xs,
            *[per_rm[rm] for rm in per_rm],
            labels=list(per_rm),
            colors=[cmap(2 * k % 20) for k in range(len(per_rm))],
        )
        ax.set_title(task, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"{task} items seen")
    axes[0].set_ylabel("share of LASeR's choices")
    axes[-1].legend(fontsize=6, loc="lower right")
    return fig
