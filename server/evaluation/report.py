"""The Markdown/JSON report and the PNG plots of an evaluation (the stream / held-out
protocol of `protocol.py`).

Files written to the output folder:

| file | holds |
|---|---|
| `report.json` | everything below, machine-readable |
| `report.md` | held-out accuracy/F1 per task per strategy, LASeR minus each baseline with paired |
|  | bootstrap 95% CIs, RM use per task, cost, robustness, the settings ablation |
| `accuracy.png` | held-out results as grouped bars |
| `ci.png` | LASeR minus each baseline with its 95% interval |
| `regret.png` | cumulative regret along the stream against the best RM per task |
| `rm_share.png` | LASeR's RM choice per task as the stream goes on |
| `items.jsonl` | per item: candidates, their grades, every RM's scores, the greedy answer |

`pilot.md` / `pilot.json` instead, for `--pilot`: each RM's score per task, to see whether
there is anything to select before paying for a full run.

>>> stats([0.5, 0.7])["mean"]
0.6
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Row order of the tables: the contenders, then the references that know the answers.
REFERENCE_ROWS = ("oracle_rm_task", "oracle_rm_query", "oracle")
LABELS = {
    "laser": "LASeR (LinUCB, frozen after the stream)",
    "random_rm": "random RM (expected)",
    "ensemble_mean": "score ensemble (mean)",
    "ensemble_vote": "agreement ensemble (vote)",
    "first_sample": "no reranking (first sample)",
    "greedy": "greedy decoding",
    "oracle_rm_task": "best RM per task (chosen on the stream)",
    "oracle_rm_query": "best RM per query (hindsight)",
    "oracle": "oracle (any correct candidate)",
}


def label(name: str, chosen: dict[str, str] | None = None) -> str:
    if name == "best_single":
        rm = (chosen or {}).get("best_single_rm", "?")
        return f"best single RM (chosen on the stream: {rm})"
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


def ordered(names: Sequence[str]) -> list[str]:
    head = ["laser", "best_single", "random_rm"]
    singles = sorted(n for n in names if n.startswith("rm:"))
    tail = ["ensemble_mean", "ensemble_vote", "first_sample", "greedy"]
    rest = [n for n in names if n not in head + singles + tail + list(REFERENCE_ROWS)]
    order = [*head, *tail, *singles, *rest, *REFERENCE_ROWS]
    return [n for n in order if n in names]


def _p(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}"


# -- Markdown ---------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    r = report
    cfg, s, tasks = r["config"], r["strategies"], r["tasks"]
    keep = r["headline_tasks"]
    chosen = r["chosen_on_stream"]
    las = s["laser"]
    n_stream = sum(v["stream"] for v in tasks.values())
    n_held = sum(v["heldout"] for v in tasks.values())
    cols = list(tasks)
    head = "| strategy | " + " | ".join(
        f"{t} ({tasks[t]['metric']}, {tasks[t]['heldout']})" for t in cols
    )
    table = [
        head + " | **headline mean** | all tasks | RM calls/item | RM ms/item |",
        "|---" * (len(cols) + 5) + "|",
    ]
    for name in ordered(list(s)):
        row = s[name]
        cells = [_p(row["per_task"].get(t)) for t in cols]
        mean = _p(row["heldout"])
        if name == "laser":
            mean = f"**{mean} ± {100 * row['heldout_orderings']['std']:.1f}**"
        calls = "-" if row["rm_calls_per_item"] is None else f"{row['rm_calls_per_item']:g}"
        ms = "-" if row["rm_ms_per_item"] is None else f"{row['rm_ms_per_item']:.1f}"
        table.append(
            f"| {row['label']} | "
            + " | ".join(cells)
            + f" | {mean} | {_p(row['heldout_all_tasks'])} | {calls} | {ms} |"
        )
    ci_rows = [
        f"| {s[n]['label']} | {_p(c['diff'], True)} | [{_p(c['lo'], True)}, {_p(c['hi'], True)}] |"
        f" {'yes' if c['lo'] > 0 else ('no (below)' if c['hi'] < 0 else 'no (overlaps 0)')} |"
        for n, c in r["ci"].items()
        if n in s
    ]
    rms = r["rms"]
    usage_rows = [
        f"| {t} | "
        + " | ".join(f"{100 * u[rm]:.0f}%" for rm in rms)
        + f" | `{chosen.get(f'best_rm:{t}', '-')}` |"
        for t, u in r["laser_heldout_usage"].items()
    ]
    out = [
        "# laser-server evaluation",
        "",
        f"Model `{r['model']}`; reward models {', '.join(f'`{x}`' for x in rms)}; "
        f"{r['n_items']} items: {n_stream} in the stream split, {n_held} held out (per task, "
        f"seeded); n = {cfg['n']} candidates per item (temperature {cfg['temperature']}, "
        f"max_tokens {cfg['max_tokens']}); {cfg['orderings']} orderings of the stream; seed "
        f"{cfg['seed']}. LASeR: LinUCB alpha {r['laser']['alpha']}, epsilon "
        f"{r['laser']['epsilon']}, warm-up {r['laser']['warmup']} per RM and kind of query, "
        f"context `{r['context']}` ({r['context_dim']} dims).",
        "",
        f"Wall time {r['wall_seconds']:.0f} s on {r['machine']}; engine generate calls this "
        f"run: {r['stats']['engine_generate_calls']}, RM scoring calls: "
        f"{r['stats']['rm_score_calls']} (cache hits {r['stats']['cache_hits']}).",
        "",
        "## Held-out results, %",
        "",
        "LASeR learns online on the stream split (feedback: the correctness / F1 of the answer "
        "it picked), then is frozen (the RM with the highest expected reward per query) and "
        "scored on the held-out split with everyone else. The best single RM and the best RM "
        "per task are chosen on the stream split. Headline mean: mean over "
        + ", ".join(keep)
        + " (math: accuracy; QA: token F1 of the first sentence). LASeR: mean over orderings "
        "± std over orderings.",
        "",
        *table,
        "",
        "## LASeR minus each baseline (held-out, headline tasks)",
        "",
        f"Paired per held-out item (LASeR averaged over the {cfg['orderings']} orderings), 95% "
        "interval from 2,000 bootstrap resamples of the items within each task. The interval "
        "covers item sampling, not the sampling of candidates.",
        "",
        "| baseline | LASeR minus it (points) | 95% CI | LASeR above? |",
        "|---|---|---|---|",
        *ci_rows,
        "",
        "![held-out results](accuracy.png)",
        "![LASeR minus each baseline](ci.png)",
        "",
        "## Which RM LASeR deploys per task (held-out, mean over orderings)",
        "",
        "| task | " + " | ".join(rms) + " | best RM on the stream |",
        "|---" * (len(rms) + 2) + "|",
        *usage_rows,
        "",
        f"On the stream LASeR scored {_p(las['stream'])} online (mean over orderings, "
        f"{_p(las['stream_orderings']['min'])}-{_p(las['stream_orderings']['max'])}), the best "
        f"single RM {_p(s['best_single']['stream'])}, the best RM per task "
        f"{_p(s['oracle_rm_task']['stream'])}.",
        "",
        "![regret along the stream](regret.png)",
        "![RM share per task along the stream](rm_share.png)",
        "",
    ]
    n_cand = max(1, int(cfg["n"]))
    singles = [n for n in ordered(list(s)) if n.startswith("rm:")]
    st = r.get("stats", {})
    sources = st.get("loglik_sources", {})
    out += [
        "## Cost of each RM",
        "",
        "Measured scoring time per held-out item and per candidate (n = "
        f"{cfg['n']}), from the run that filled the cache (items scored in concurrent chunks, "
        "each chunk's wall time shared out by call latency).",
        "",
        "| RM | ms per item | ms per candidate |",
        "|---|---|---|",
        *(
            f"| `{n[3:]}` | {s[n]['rm_ms_per_item']:.1f} | {s[n]['rm_ms_per_item'] / n_cand:.2f} |"
            for n in singles
            if s[n].get("rm_ms_per_item") is not None
        ),
        "",
    ]
    if sources:
        out += [
            "Likelihoods this run: "
            + "; ".join(
                f"`{rm}` {v['from_generation']} candidates from the logprobs kept while "
                f"sampling, {v['engine_passes']} by an engine pass"
                for rm, v in sources.items()
            )
            + " (samples read from the disk cache bring their kept logprobs back; caches "
            "written before they were stored do not).",
            "",
        ]
    rob = r.get("robustness", {})
    if "noise" in rob:
        out += [
            "## Robustness: a noise RM added",
            "",
            "An RM returning standard-normal noise joins the portfolio; held-out headline mean "
            f"without and with it. LASeR gave it {100 * rob['noise_laser_share']:.1f}% of its "
            "stream choices.",
            "",
            "| strategy | without | with noise RM | change |",
            "|---|---|---|---|",
            *(
                f"| {label(n, chosen)} | {_p(v['without'])} | {_p(v['with'])} | "
                f"{_p(v['change'], sign=True)} |"
                for n, v in rob["noise"].items()
            ),
            "",
        ]
    if rob.get("midway"):
        out += [
            "## Robustness: an RM added midway",
            "",
            "LASeR starts without the RM; it joins as a new arm half-way through the stream. "
            "Share of LASeR's stream choices going to it afterwards; held-out headline mean.",
            "",
            "| RM added | share after joining | share in last quarter | held-out: added "
            "midway | present from start | never added |",
            "|---|---|---|---|---|---|",
            *(
                f"| `{m['rm']}` | {m['share_after']:.0%} | {m['share_last_quarter']:.0%} | "
                f"{_p(m['heldout']['midway'])} | {_p(m['heldout']['from_start'])} | "
                f"{_p(m['heldout']['never'])} |"
                for m in rob["midway"]
            ),
            "",
        ]
    grid = r.get("ablation") or []
    if grid:
        serving = r["laser"]
        out += [
            "## LASeR's settings, chosen on the stream",
            "",
            "Online mean over the STREAM split (headline tasks, mean ± std over orderings) for "
            "each context, warm-up and alpha; held-out items play no part. `features` is the "
            "serving context; `bias` a constant (context-free UCB). Top 12 and the serving "
            "settings:",
            "",
            "| context (dims) | warm-up | alpha | stream mean |",
            "|---|---|---|---|",
        ]
        shown = grid[:12] + [
            g
            for g in grid[12:]
            if g["context"] == "features"
            and g["warmup"] == serving["warmup"]
            and g["alpha"] == serving["alpha"]
        ]
        for g in shown:
            mark = (
                " (serving)"
                if g["context"] == "features"
                and g["warmup"] == serving["warmup"]
                and g["alpha"] == serving["alpha"]
                else ""
            )
            out.append(
                f"| `{g['context']}` ({g['dim']}){mark} | {g['warmup']} | {g['alpha']} | "
                f"{_p(g['stream_mean'])} ± {_p(g['stream_std'])} |"
            )
        out.append("")
    out += ["## Command", "", "```", r["command"], "```", ""]
    return "\n".join(out)


# -- plots ------------------------------------------------------------------------------------
def plot_all(report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
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
    fig.tight_layout()
    fig.savefig(out / "accuracy.png")
    plt.close(fig)
    written.append("accuracy.png")

    ci = report["ci"]
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
    fig.tight_layout()
    fig.savefig(out / "ci.png")
    plt.close(fig)
    written.append("ci.png")

    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for k, (n, curve) in enumerate(report["regret"].items()):
        ax.plot(np.arange(1, len(curve) + 1), curve, label=label(n, chosen), color=cmap(2 * k))
    ax.set_xlabel("stream step")
    ax.set_ylabel("cumulative regret vs best RM per task")
    ax.set_title("Regret along the stream (mean over orderings)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "regret.png")
    plt.close(fig)
    written.append("regret.png")

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
    fig.tight_layout()
    fig.savefig(out / "rm_share.png")
    plt.close(fig)
    written.append("rm_share.png")
    return written


def write(report: dict[str, Any], out: Path) -> list[str]:
    """report.json, report.md and the plots into `out`; returns the file names."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return ["report.json", "report.md", *plot_all(report, out)]


def pilot_markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    tasks = list(next(iter(rows.values())))
    lines = [
        "# laser-server evaluation: pilot",
        "",
        f"{report['items']} items. Accuracy (F1 for QA), %, of the candidate each RM ranks "
        "first. Worth a full run when RMs lead on different tasks and the best RM per query "
        "is well above every single RM.",
        "",
        "| | " + " | ".join(tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
        *(f"| {label(n)} | " + " | ".join(_p(v[t]) for t in tasks) + " |" for n, v in rows.items()),
        "",
    ]
    return "\n".join(lines)


def write_pilot(report: dict[str, Any], out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pilot.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "pilot.md").write_text(pilot_markdown(report), encoding="utf-8")
    return ["pilot.json", "pilot.md"]
