"""Summaries, the Markdown/JSON report and the PNG plots of an evaluation.

Files written to the output folder:

| file | holds |
|---|---|
| `report.json` | everything below, machine-readable |
| `report.md` | accuracy/F1 per task per strategy (mean ± std over orderings), LASeR's RM |
|  | usage per task, cost, robustness, alpha sweep |
| `accuracy.png` | the table as grouped bars with spread |
| `rm_usage.png` | which RM LASeR chose, per task |
| `learning_curves.png` | running accuracy over the stream |
| `midway.png` | LASeR's use of an RM added half-way through |
| `items.jsonl` | per item: candidates, their grades, every RM's scores, the greedy answer |

>>> stats([0.5, 0.7])["mean"]
0.6
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laser.server.evaluation.strategies import Run

# Row order of the tables: the contenders, then the references that know the answers.
REFERENCE_ROWS = ("oracle_rm_task", "oracle_rm_query", "oracle")
LABELS = {
    "laser": "LASeR (LinUCB)",
    "random_rm": "random RM",
    "ensemble_mean": "score ensemble (mean)",
    "ensemble_vote": "agreement ensemble (vote)",
    "first_sample": "no reranking (first sample)",
    "greedy": "greedy decoding",
    "oracle_rm_task": "best RM per task (hindsight)",
    "oracle_rm_query": "best RM per query (hindsight)",
    "oracle": "oracle (any correct candidate)",
}


def label(name: str) -> str:
    if name.startswith("rm:"):
        return f"single RM: {name[3:]}"
    return LABELS.get(name, name)


def stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 4),
        "std": round(float(a.std()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
    }


def task_means(run: Run, tasks: Sequence[str], metric: str = "quality") -> dict[str, float]:
    values = run.quality if metric == "quality" else run.exact
    arr = np.asarray(tasks)
    return {t: float(values[arr == t].mean()) for t in dict.fromkeys(tasks)}


def macro(run: Run, tasks: Sequence[str], metric: str = "quality") -> float:
    """The mean over tasks of each task's mean (the paper's average over data sets)."""
    return float(np.mean(list(task_means(run, tasks, metric).values())))


def summarise(runs: dict[str, list[Run]], tasks: Sequence[str]) -> dict[str, Any]:
    """Per strategy: overall (macro over tasks) and per-task mean/spread over orderings,
    exact match, and cost per item."""
    n_items = len(tasks)
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        per_task = [task_means(r, tasks) for r in rs]
        per_task_em = [task_means(r, tasks, "exact") for r in rs]
        out[name] = {
            "label": label(name),
            "overall": stats([macro(r, tasks) for r in rs]),
            "per_task": {t: stats([p[t] for p in per_task]) for t in per_task[0]},
            "exact_per_task": {t: stats([p[t] for p in per_task_em]) for t in per_task_em[0]},
            "rm_calls_per_item": round(float(np.mean([r.rm_calls for r in rs])) / n_items, 3),
            "rm_ms_per_item": round(1000 * float(np.mean([r.rm_seconds for r in rs])) / n_items, 2),
            "select_us_per_item": round(
                1e6 * float(np.mean([r.overhead_seconds for r in rs])) / n_items, 1
            ),
        }
    return out


def rm_usage(runs: Sequence[Run], tasks: Sequence[str], rms: Sequence[str]) -> dict[str, Any]:
    """Per task, the share of items each RM was chosen for (mean over orderings)."""
    arr = np.asarray(tasks)
    out: dict[str, dict[str, float]] = {}
    for t in dict.fromkeys(tasks):
        rows = np.flatnonzero(arr == t)
        out[t] = {
            rm: round(float(np.mean([np.mean([r.arms[i] == rm for i in rows]) for r in runs])), 4)
            for rm in rms
        }
    return out


def mean_curve(runs: Sequence[Run]) -> dict[str, list[float]]:
    curves = np.array([r.curve() for r in runs])
    return {
        "mean": [round(float(v), 4) for v in curves.mean(0)],
        "min": [round(float(v), 4) for v in curves.min(0)],
        "max": [round(float(v), 4) for v in curves.max(0)],
    }


def share_by_window(run: Run, rm: str, window: int) -> list[float]:
    """Share of stream steps whose chosen RM is `rm`, per consecutive window of steps."""
    chosen = [run.arms[i] == rm for i in run.order]
    return [float(np.mean(chosen[s : s + window])) for s in range(0, len(chosen), window)]


# -- Markdown ---------------------------------------------------------------------------------
def _pm(s: dict[str, float], scale: float = 100.0) -> str:
    if s["std"] == 0:
        return f"{scale * s['mean']:.1f}"
    return f"{scale * s['mean']:.1f} ± {scale * s['std']:.1f}"


def _pct(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}"


def ordered(names: Sequence[str]) -> list[str]:
    head = ["laser", "random_rm"]
    singles = sorted(n for n in names if n.startswith("rm:"))
    tail = ["ensemble_mean", "ensemble_vote", "first_sample", "greedy"]
    rest = [n for n in names if n not in head + singles + tail + list(REFERENCE_ROWS)]
    order = [*head, *singles, *tail, *rest, *REFERENCE_ROWS]
    return [n for n in order if n in names]


def accuracy_table(summary: dict[str, Any], tasks: dict[str, Any], bold: str | None) -> str:
    names = ordered(list(summary))
    cols = list(tasks)
    head = "| strategy | " + " | ".join(
        f"{t} ({tasks[t]['metric']}, {tasks[t]['items']})" for t in cols
    )
    lines = [head + " | mean over tasks | RM calls/item |", "|---" * (len(cols) + 3) + "|"]
    for name in names:
        s = summary[name]
        cells = [_pm(s["per_task"][t]) for t in cols]
        overall = _pm(s["overall"])
        if name == bold:
            overall = f"**{overall}**"
        calls = "-" if name in REFERENCE_ROWS else f"{s['rm_calls_per_item']:g}"
        lines.append(f"| {s['label']} | " + " | ".join(cells) + f" | {overall} | {calls} |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    r = report
    cfg = r["config"]
    summary = r["strategies"]
    tasks = r["tasks"]
    best_single = r["best_single_rm"]
    out = [
        "# laser-server evaluation",
        "",
        f"Model `{r['model']}`, reward models {', '.join(f'`{x}`' for x in r['rms'])}; "
        f"{r['n_items']} items, n = {cfg['n']} candidates per item (temperature "
        f"{cfg['temperature']}, max_tokens {cfg['max_tokens']}), {cfg['orderings']} orderings, "
        f"seed {cfg['seed']}. LinUCB alpha {r['laser']['alpha']}, epsilon "
        f"{r['laser']['epsilon']}, context {r['context_dim']} dims.",
        "",
        f"Wall time {r['wall_seconds']:.0f} s on {r['machine']}; engine generate calls this run: "
        f"{r['stats']['engine_generate_calls']}, RM scoring calls: {r['stats']['rm_score_calls']} "
        f"(cache hits {r['stats']['cache_hits']}).",
        "",
        "## Accuracy (F1 for QA) per task, % (mean ± std over orderings)",
        "",
        "Every strategy picks from the same cached candidates. Math and multiple choice: "
        "accuracy; QA: token F1 of the answer's first sentence. 'mean over tasks' averages "
        "the task columns.",
        "",
        accuracy_table(summary, tasks, "laser"),
        "",
        f"Best single RM in hindsight: `{best_single}`. LASeR − best single RM: "
        f"{100 * r['headline']['laser_minus_best_single']:+.1f} points; LASeR − score "
        f"ensemble: {100 * r['headline']['laser_minus_ensemble']:+.1f} points, at "
        f"{r['headline']['laser_cost_share_of_ensemble']:.0%} of the ensemble's RM scoring time.",
        "",
        "Exact match on QA tasks, %: "
        + ", ".join(
            f"{t}: "
            + "; ".join(
                f"{summary[n]['label']} {_pm(summary[n]['exact_per_task'][t])}"
                for n in ("laser", f"rm:{best_single}", "ensemble_mean", "oracle")
                if n in summary
            )
            for t in tasks
            if tasks[t]["metric"] == "F1"
        )
        if any(tasks[t]["metric"] == "F1" for t in tasks)
        else "",
        "",
        "![accuracy](accuracy.png)",
        "",
        "## Which RM LASeR chose, per task (share of items, mean over orderings)",
        "",
        "| task | " + " | ".join(r["rms"]) + " |",
        "|---" * (len(r["rms"]) + 1) + "|",
        *(
            f"| {t} | " + " | ".join(f"{100 * u[rm]:.0f}%" for rm in r["rms"]) + " |"
            for t, u in r["laser_usage"].items()
        ),
        "",
        "Best single RM per task in hindsight: "
        + ", ".join(f"{t}: `{rm}`" for t, rm in r["best_rm_per_task"].items())
        + ".",
        "",
        "![RM usage](rm_usage.png)",
        "",
        "## Learning curves",
        "",
        "Running accuracy over the stream (mean over orderings; shaded: min-max).",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "## Cost",
        "",
        "RM scoring time was measured once per RM and item (items scored in concurrent "
        "chunks, each chunk's wall time shared out by call latency) and is charged to every "
        "strategy that uses that RM on that item. Sampling the n candidates "
        f"(shared by every strategy but greedy) took {r['stats']['sample_seconds']:.0f} s "
        f"this run for {r['stats']['engine_generate_calls']} uncached engine calls.",
        "",
        "| strategy | RM calls per item | RM scoring ms per item | selection us per item |",
        "|---|---|---|---|",
        *(
            f"| {summary[n]['label']} | {summary[n]['rm_calls_per_item']:g} | "
            f"{summary[n]['rm_ms_per_item']:.1f} | {summary[n]['select_us_per_item']:.0f} |"
            for n in ordered(list(summary))
            if n not in REFERENCE_ROWS
        ),
        "",
    ]
    rob = r.get("robustness", {})
    if "noise" in rob:
        out += [
            "## Robustness: a noise RM added",
            "",
            "An RM returning standard-normal noise joins the pool; accuracy (mean over tasks) "
            "without and with it.",
            "",
            "| strategy | without | with noise RM | change |",
            "|---|---|---|---|",
            *(
                f"| {label(n)} | {_pct(v['without'])} | {_pct(v['with'])} | "
                f"{_pct(v['change'], sign=True)} |"
                for n, v in rob["noise"].items()
            ),
            "",
        ]
    if "midway" in rob:
        out += [
            "## Robustness: an RM added midway",
            "",
            "LASeR starts without the RM; it joins as a new arm (from the prior) half-way "
            "through the stream. Share of LASeR's choices going to it after it joins, and "
            "accuracy on the second half of the stream.",
            "",
            "| RM added | share after joining | share in last quarter | 2nd-half acc: added "
            "midway | present from start | never added |",
            "|---|---|---|---|---|---|",
            *(
                f"| `{m['rm']}` | {m['share_after']:.0%} | {m['share_last_quarter']:.0%} | "
                f"{100 * m['second_half']['midway']:.1f} | "
                f"{100 * m['second_half']['from_start']:.1f} | "
                f"{100 * m['second_half']['never']:.1f} |"
                for m in rob["midway"]
            ),
            "",
            "![midway](midway.png)",
            "",
        ]
    sweep = r.get("alpha_sweep")
    if sweep:
        out += [
            "## LASeR's settings: alpha and context",
            "",
            "| alpha | " + " | ".join(str(a) for a in sweep) + " |",
            "|---" * (len(sweep) + 1) + "|",
            "| mean over tasks | " + " | ".join(_pm(v) for v in sweep.values()) + " |",
            "",
            "Context ablation (same alpha): featurizer context "
            f"{_pm(r['context_ablation']['features'])}, bias only (context-free UCB) "
            f"{_pm(r['context_ablation']['bias'])}.",
            "",
        ]
    out += ["## Command", "", "```", r["command"], "```", ""]
    return "\n".join(out)


# -- plots ------------------------------------------------------------------------------------
def plot_all(report: dict[str, Any], runs: dict[str, list[Run]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    summary, tasks = report["strategies"], list(report["tasks"])

    # Accuracy per task per strategy, with the spread over orderings.
    names = [n for n in ordered(list(summary)) if n not in ("oracle_rm_task", "oracle_rm_query")]
    groups = [*tasks, "mean"]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 * len(groups) + 1), 5.0), dpi=90)
    width = 0.8 / len(names)
    cmap = plt.get_cmap("tab20")
    for k, n in enumerate(names):
        s = summary[n]
        vals = [s["per_task"][t]["mean"] for t in tasks] + [s["overall"]["mean"]]
        errs = [s["per_task"][t]["std"] for t in tasks] + [s["overall"]["std"]]
        xs = np.arange(len(groups)) + (k - (len(names) - 1) / 2) * width
        ax.bar(xs, vals, width, yerr=errs, label=s["label"], color=cmap(k % 20), capsize=1.5)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("accuracy / F1")
    ax.set_ylim(0, 1)
    ax.set_title("Best-of-n with different RM-selection strategies")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png")
    plt.close(fig)
    written.append("accuracy.png")

    # LASeR's RM usage per task.
    usage, rms = report["laser_usage"], report["rms"]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(usage) + 1.5), dpi=90)
    left = np.zeros(len(usage))
    for k, rm in enumerate(rms):
        shares = np.array([usage[t][rm] for t in usage])
        ax.barh(list(usage), shares, left=left, label=rm, color=cmap(2 * k % 20))
        left += shares
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of items")
    ax.set_title("RM chosen by LASeR, per task")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "rm_usage.png")
    plt.close(fig)
    written.append("rm_usage.png")

    # Learning curves over the stream.
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for k, n in enumerate(report["curves"]):
        c = report["curves"][n]
        x = np.arange(1, len(c["mean"]) + 1)
        ax.plot(x, c["mean"], label=label(n), color=cmap(2 * k % 20))
        ax.fill_between(x, c["min"], c["max"], alpha=0.12, color=cmap(2 * k % 20))
    ax.set_xlabel("items seen")
    ax.set_ylabel("running accuracy / F1")
    ax.set_ylim(0, 1)
    ax.set_title("Learning curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png")
    plt.close(fig)
    written.append("learning_curves.png")

    mid = report.get("robustness", {}).get("midway")
    if mid:
        fig, ax = plt.subplots(figsize=(7, 3.5), dpi=90)
        for k, m in enumerate(mid):
            w = m["window"]
            xs = (np.arange(len(m["share_by_window"])) + 0.5) * w
            ax.plot(
                xs, m["share_by_window"], marker="o", label=f"{m['rm']} (added)", color=cmap(2 * k)
            )
            ax.axvline(m["added_at"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("stream step")
        ax.set_ylabel(f"share of LASeR's choices (windows of {mid[0]['window']})")
        ax.set_ylim(0, 1)
        ax.set_title("An RM added midway (dashed line)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "midway.png")
        plt.close(fig)
        written.append("midway.png")
    return written


def write(report: dict[str, Any], runs: dict[str, list[Run]], out: Path) -> list[str]:
    """report.json, report.md and the plots into `out`; returns the file names."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return ["report.json", "report.md", *plot_all(report, runs, out)]
