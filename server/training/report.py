"""What a run reports. As it goes: `pairs.jsonl` (`append_pairs`) and `status.json`
(`write_status`). At the end: `summary.json` (`summarize`: the losses, which RM each step
used and what it earned, LinUCB's estimates, the greedy accuracy on held-out prompts before
and after, `held_out_accuracy`) and the training plot (`plot_training`: loss per step
coloured by the RM used, with the bandit's shared baseline and each step's reward; RM usage
per iteration and per task)."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from laser.bandit import LinUCB, Selector
from laser.server import answers
from laser.server.data import PromptItem
from laser.server.engines.base import Adapter, Engine, Sampling
from laser.server.runtime import write_atomic_text
from laser.server.training.config import TrainConfig
from laser.server.training.dpo import Pair
from laser.server.training.parts import render
from laser.server.training.resume import RunState

log = logging.getLogger("laser.server.training")


def item_quality(text: str, item: PromptItem) -> float:
    """One held-out answer's grade: token F1 of the short answer for span answers (QA), 1/0
    for numbers and choices."""
    assert item.reference is not None
    kind = answers.answer_kind(item.task, item.reference)
    if kind == "span":
        return answers.token_f1(answers.short_answer(text), item.reference)
    return float(answers.matches(text, item.reference, kind))


async def held_out_accuracy(
    engine: Engine, items: list[PromptItem], max_tokens: int, adapter: Adapter | None
) -> dict[str, Any] | None:
    """Greedy accuracy on `items` (each with a `reference`; QA graded by token F1), overall
    and per task, of the policy `engine` samples (with `adapter`), and each item's grade in
    order (`per_item`, for paired intervals); None without items."""
    if not items:
        return None
    prompts = [render(engine, it) for it in items]
    gens = await engine.generate_batch(prompts, Sampling(1, max_tokens, 0.0), adapter)
    per_item = [item_quality(g.completions[0].text, it) for it, g in zip(items, gens, strict=True)]
    by_task: dict[str, list[float]] = {}
    for it, q in zip(items, per_item, strict=True):
        by_task.setdefault(it.task or "all", []).append(q)
    return {
        "accuracy": float(np.mean(per_item)),
        "items": len(per_item),
        "by_task": {t: float(np.mean(v)) for t, v in by_task.items()},
        "per_item": [round(q, 4) for q in per_item],
    }


def append_pairs(
    out: Path, step: int, pairs: list[Pair], prompts: list[str], rm_of: dict[int, str]
) -> None:
    """Append step `step`'s preference pairs to `out/pairs.jsonl`, each with its prompt
    (`prompts[pair.item]`) and the RM that ranked it (`rm_of[pair.item]`)."""
    with (out / "pairs.jsonl").open("a", encoding="utf-8") as f:
        for p in pairs:
            line = {
                "prompt": prompts[p.item],
                "chosen": p.chosen,
                "rejected": p.rejected,
                "step": step,
                "rm": rm_of[p.item],
            }
            f.write(json.dumps(line) + "\n")


def write_status(
    out: Path,
    status: str,
    state: RunState,
    iterations: int,
    total: int,
    last: dict[str, Any] | None,
) -> None:
    """`out/status.json`: where the run stands (`status`: running, cancelled, succeeded),
    after step record `last`."""
    write_atomic_text(
        out / "status.json",
        json.dumps(
            {
                "state": status,
                "iteration": state.iteration,
                "iterations": iterations,
                "step": state.step,
                "steps": total,
                "last_loss": None if last is None else last.get("loss"),
                "last_rm": None if last is None else last.get("rm"),
                "rm_counts": state.rm_counts,
                "updated": time.time(),
            }
        ),
    )


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The step records of `steps.jsonl`."""
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def summarize(
    cfg: TrainConfig,
    steps: list[dict[str, Any]],
    state: RunState,
    *,
    model: str,
    total: int,
    with_bandit: bool,
    estimates: dict[str, dict[str, float]] | None,
    eval_after: dict[str, Any] | None,
    wall_s: float,
    adapter: Path,
) -> dict[str, Any]:
    """The run's summary from its config, its step records (`read_steps`) and its final
    state. `with_bandit`: False for the ensemble (no bandit reward); `estimates`:
    `bandit_estimates`."""
    losses = [s["loss"] for s in steps if s.get("loss") is not None]
    rewarded: dict[str, list[float]] = {}
    for s in steps:
        if s.get("bandit_reward") is not None and s["rm"] != "mixed":
            rewarded.setdefault(s["rm"], []).append(s["bandit_reward"])
    return {
        "selector": cfg.label,
        "bandit_mode": cfg.bandit_mode,
        "bandit_reward": cfg.bandit_reward if with_bandit else None,
        "model": model,
        "iterations": cfg.iterations,
        "steps": total,
        "pairs": sum(s["pairs"] for s in steps),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "rm_counts": state.rm_counts,
        # Which RM each step used, per iteration, and the mean reward each RM earned.
        "rm_by_step": {
            str(k): [s["rm"] for s in steps if s["iteration"] == k]
            for k in sorted({s["iteration"] for s in steps})
        },
        "rm_mean_reward": {rm: round(float(np.mean(v)), 4) for rm, v in sorted(rewarded.items())},
        "bandit_estimates": estimates,
        "eval_before": state.eval_before,
        "eval_after": eval_after,
        "wall_s": round(wall_s, 1),
        "adapter": str(adapter),
    }


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


def bandit_estimates(
    selector: Selector | None, x: npt.NDArray[np.float64], arms: list[str]
) -> dict[str, dict[str, float]] | None:
    """LinUCB's expectation and UCB per RM of `arms` at context `x` (None for the
    baselines): what LASeR would pick next, and how sure it is."""
    if not isinstance(selector, LinUCB):  # the baselines have no estimates to predict
        return None
    return {
        arm: {k: round(v, 4) for k, v in est.items()}
        for arm, est in selector.predict(x).items()
        if arm in arms
    }


def write_report(
    out: Path, summary: dict[str, Any], steps: list[dict[str, Any]], title: str
) -> None:
    """`summary.json` and the plot `training.png` in `out`."""
    write_atomic_text(out / "summary.json", json.dumps(summary, indent=1))
    try:
        plot_training(steps, out / "training.png", title=title)
    except Exception as exc:  # a plot is never worth failing a finished run
        log.warning("plot failed: %s", exc)
