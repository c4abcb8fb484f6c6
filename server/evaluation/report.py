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

`plots.py` draws the PNGs; `labels.py` names and orders the strategies' rows.

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

from laser.server.evaluation.labels import label, ordered
from laser.server.evaluation.plots import plot_all


def stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 4),
        "std": round(float(a.std()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
    }


def _p(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}"


# -- Markdown ---------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    """report.md: one function per section, in this order; the optional sections (likelihood
    sources, robustness, ablation) are empty when the report has none."""
    return "\n".join(
        [
            *_header(report),
            *_heldout_section(report),
            *_ci_section(report),
            *_deployment_section(report),
            *_usage_section(report),
            *_cost_section(report),
            *_noise_section(report),
            *_midway_section(report),
            *_ablation_section(report),
            *["## Command", "", "```", report["command"], "```", ""],
        ]
    )


def _header(r: dict[str, Any]) -> list[str]:
    cfg, tasks, rms = r["config"], r["tasks"], r["rms"]
    n_stream = sum(v["stream"] for v in tasks.values())
    n_held = sum(v["heldout"] for v in tasks.values())
    return [
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
        f"run: {r['stats'].get('engine_generate_calls', 0)}, RM scoring calls: "
        f"{r['stats'].get('rm_score_calls', 0)} (cache hits {r['stats'].get('cache_hits', 0)}).",
        "",
    ]


def _heldout_section(r: dict[str, Any]) -> list[str]:
    return [
        "## Held-out results, %",
        "",
        "LASeR learns online on the stream split (feedback: the correctness / F1 of the answer "
        "it picked), then is frozen (the RM with the highest expected reward per query) and "
        "scored on the held-out split with everyone else. The best single RM and the best RM "
        "per task are chosen on the stream split. Headline mean: mean over "
        + ", ".join(r["headline_tasks"])
        + " (math: accuracy; QA: token F1 of the first sentence). LASeR: mean over orderings "
        "± std over orderings.",
        "",
        *_heldout_table(r),
        "",
    ]


def _heldout_table(r: dict[str, Any]) -> list[str]:
    """One row per strategy: held-out % per task, headline mean, all tasks, cost."""
    s, tasks = r["strategies"], r["tasks"]
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
    return table


def _ci_section(r: dict[str, Any]) -> list[str]:
    s = r["strategies"]
    ci_rows = [
        f"| {s[n]['label']} | {_p(c['diff'], True)} | [{_p(c['lo'], True)}, {_p(c['hi'], True)}] |"
        f" {'yes' if c['lo'] > 0 else ('no (below)' if c['hi'] < 0 else 'no (overlaps 0)')} |"
        for n, c in r["ci"].items()
        if n in s
    ]
    return [
        "## LASeR minus each baseline (held-out, headline tasks)",
        "",
        f"Paired per held-out item (LASeR averaged over the {r['config']['orderings']} "
        "orderings), 95% interval from 2,000 bootstrap resamples of the items within each "
        "task. The interval covers item sampling, not the sampling of candidates.",
        "",
        "| baseline | LASeR minus it (points) | 95% CI | LASeR above? |",
        "|---|---|---|---|",
        *ci_rows,
        "",
        "![held-out results](accuracy.png)",
        "![LASeR minus each baseline](ci.png)",
        "",
    ]


def _usage_section(r: dict[str, Any]) -> list[str]:
    s, rms, chosen = r["strategies"], r["rms"], r["chosen_on_stream"]
    las = s["laser"]
    usage_rows = [
        f"| {t} | "
        + " | ".join(f"{100 * u[rm]:.0f}%" for rm in rms)
        + f" | `{chosen.get(f'best_rm:{t}', '-')}` |"
        for t, u in r["laser_heldout_usage"].items()
    ]
    return [
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


def _cost_section(r: dict[str, Any]) -> list[str]:
    """Each single RM's measured time, and where the likelihoods came from (when counted)."""
    cfg, s = r["config"], r["strategies"]
    n_cand = max(1, int(cfg["n"]))
    singles = [n for n in ordered(list(s)) if n.startswith("rm:")]
    out = [
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
    sources = r.get("stats", {}).get("loglik_sources", {})
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
    return out


def _noise_section(r: dict[str, Any]) -> list[str]:
    rob = r.get("robustness", {})
    if "noise" not in rob:
        return []
    return [
        "## Robustness: a noise RM added",
        "",
        "An RM returning standard-normal noise joins the portfolio; held-out headline mean "
        f"without and with it. LASeR gave it {100 * rob['noise_laser_share']:.1f}% of its "
        "stream choices.",
        "",
        "| strategy | without | with noise RM | change |",
        "|---|---|---|---|",
        *(
            f"| {label(n, r['chosen_on_stream'])} | {_p(v['without'])} | {_p(v['with'])} | "
            f"{_p(v['change'], sign=True)} |"
            for n, v in rob["noise"].items()
        ),
        "",
    ]


def _midway_section(r: dict[str, Any]) -> list[str]:
    midway = r.get("robustness", {}).get("midway")
    if not midway:
        return []
    return [
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
            for m in midway
        ),
        "",
    ]


def _ablation_section(r: dict[str, Any]) -> list[str]:
    """The top 12 settings on the stream, and the serving settings wherever they rank."""
    grid = r.get("ablation") or []
    if not grid:
        return []
    serving = r["laser"]

    def is_serving(g: dict[str, Any]) -> bool:
        return bool(
            g["context"] == "features"
            and g["warmup"] == serving["warmup"]
            and g["alpha"] == serving["alpha"]
        )

    out = [
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
    for g in grid[:12] + [g for g in grid[12:] if is_serving(g)]:
        mark = " (serving)" if is_serving(g) else ""
        out.append(
            f"| `{g['context']}` ({g['dim']}){mark} | {g['warmup']} | {g['alpha']} | "
            f"{_p(g['stream_mean'])} ± {_p(g['stream_std'])} |"
        )
    out.append("")
    return out


def _deployment_section(r: dict[str, Any]) -> list[str]:
    """The headline rule, LASeR's spread over orderings, the families, the learning rules and
    the priors transfer (`deployment.py`); empty for reports without them."""
    if "rules" not in r:
        return []
    rule = r["headline_rule"]
    gaps = ", ".join(f"{t} {_p(g)}" for t, g in rule["oracle_minus_random_on_stream"].items())
    out = [
        "## What one deployment gets",
        "",
        f"Headline tasks by a rule fixed before the run: {rule['rule']} ({gaps}).",
        "",
    ]
    sp = r["strategies"]["laser"].get("spread")
    if sp:
        chosen = r["chosen_on_stream"]
        beats = ", ".join(
            f"{label(n, chosen)} {100 * v:.0f}%" for n, v in sp["share_beating"].items()
        )
        out += [
            f"LASeR over {sp['orderings']} orderings of the stream (each one deployment): "
            f"held-out headline mean {_p(sp['mean'])} ± {_p(sp['std'])}, min {_p(sp['min'])}, "
            f"10th percentile {_p(sp['p10'])}, median {_p(sp['median'])}, max {_p(sp['max'])}; "
            f"share of orderings above: {beats}.",
            "",
        ]
    for fam, f in r.get("families", {}).items():
        h, ci = f["heldout"], f["ci"]
        out += [
            f"**{fam}** ({', '.join(f['tasks'])}): "
            + ", ".join(f"{label(n, r['chosen_on_stream'])} {_p(v)}" for n, v in h.items())
            + "; LASeR minus "
            + ", ".join(
                f"{label(n, r['chosen_on_stream'])} {_p(c['diff'], True)} "
                f"[{_p(c['lo'], True)}, {_p(c['hi'], True)}]"
                for n, c in ci.items()
            ),
            "",
        ]
    out += [
        "### Learning rules (the choice is made on the stream column only)",
        "",
        "| rule | stream (online) | held-out mean | min | p10 | median | > best single | "
        "> ensemble |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, x in r["rules"].items():
        h = x["heldout"]
        share = h["share_beating"]
        out.append(
            f"| {name} | {_p(x['stream'])} ± {_p(x['stream_std'])} | {_p(h['mean'])} ± "
            f"{_p(h['std'])} | {_p(h['min'])} | {_p(h['p10'])} | {_p(h['median'])} | "
            f"{100 * share.get('best_single', 0):.0f}% | "
            f"{100 * share.get('ensemble_mean', 0):.0f}% |"
        )
    out.append("")
    for target, row in r.get("priors_transfer", {}).items():
        out += [
            f"### Priors, deployment on {target} ({', '.join(row['tasks'])})",
            "",
            "| start | stream (online) | held-out mean | p10 | minus best single | "
            "minus ensemble |",
            "|---|---|---|---|---|---|",
        ]
        for name, x in row.items():
            if name == "tasks":
                continue
            h, a, b = x["heldout"], x["ci_vs_best_single"], x["ci_vs_ensemble"]
            out.append(
                f"| {name} | {_p(x['stream'])} | {_p(h['mean'])} ± {_p(h['std'])} | "
                f"{_p(h['p10'])} | {_p(a['diff'], True)} [{_p(a['lo'], True)}, "
                f"{_p(a['hi'], True)}] | {_p(b['diff'], True)} [{_p(b['lo'], True)}, "
                f"{_p(b['hi'], True)}] |"
            )
        out.append("")
    return out


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
