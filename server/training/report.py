"""The training plot: loss per step (coloured by the RM used, with the bandit's shared
baseline and each step's reward), RM usage per iteration and per task."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def plot_training(steps: list[dict[str, Any]], path: Path, title: str = "training") -> None:
    """Write a PNG with three panels from the `steps.jsonl` records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rms = sorted({rm for s in steps for rm in s["rms"]})
    colors = {rm: plt.get_cmap("tab10")(i % 10) for i, rm in enumerate(rms)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    xs = [s["step"] for s in steps if s.get("loss") is not None]
    ys = [s["loss"] for s in steps if s.get("loss") is not None]
    ax.plot(xs, ys, color="0.6", lw=1)
    for rm in rms:
        pts = [(s["step"], s["loss"]) for s in steps if s["rm"] == rm and s.get("loss") is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=colors[rm], label=rm, s=18, zorder=3)
    base = [
        (s["step"], s["bandit_baseline"]) for s in steps if s.get("bandit_baseline") is not None
    ]
    if base:
        ax.plot(*zip(*base, strict=True), "k--", lw=1, label="shared baseline")
    for s in steps:  # the bandit's reward for the step, next to its point
        if s.get("bandit_reward") is not None and s.get("loss") is not None:
            ax.annotate(
                f"{s['bandit_reward']:.2f}",
                (s["step"], s["loss"]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
    ax.set(
        xlabel="step",
        ylabel="DPO + NLL loss",
        title="loss per step (colour: RM"
        + (
            "; label: bandit reward)"
            if any(s.get("bandit_reward") is not None for s in steps)
            else ")"
        ),
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

    per_iter: dict[int, Counter[str]] = defaultdict(Counter)
    per_task: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in steps:
        per_iter[s["iteration"]].update(s["rms"])
        # rms counts prompts per RM; in batch mode one RM served all of the batch's tasks.
        for task in s["tasks"]:
            for rm, _ in s["rms"].items():
                per_task[task or "untagged"][rm] += 1 / len(s["rms"])
    for ax, groups, label in (
        (axes[1], {f"iter {k}": v for k, v in sorted(per_iter.items())}, "per iteration"),
        (axes[2], dict(sorted(per_task.items())), "per task"),
    ):
        names = list(groups)
        bottom = [0.0] * len(names)
        for rm in rms:
            vals = [groups[n][rm] for n in names]
            ax.bar(names, vals, bottom=bottom, color=colors[rm], label=rm)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set(ylabel="prompts", title=f"RM usage {label}")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
