"""What the evaluation reports, computed from the collected table (`harness.collect`): the
stream / held-out protocol (`protocol.py`) with every strategy, CIs, regret, RM shares, cost,
robustness and the settings ablation; or, for a pilot, the per-task RM table."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from laser.server.config import Settings
from laser.server.evaluation import protocol as pr
from laser.server.evaluation import report as rep
from laser.server.evaluation.config import Collected, EvalConfig
from laser.server.evaluation.strategies import LaserSettings
from laser.server.runtime import progress


def analyse(col: Collected, config: EvalConfig, settings: Settings) -> dict[str, Any]:
    """The stream / held-out protocol (`protocol.py`): LASeR learns on the stream, every
    strategy is scored on the held-out split; CIs, regret, RM shares, cost, robustness and the
    settings ablation."""
    t = col.table
    tasks = t.tasks
    keep = [task for task in dict.fromkeys(tasks) if task not in config.off_headline] or list(
        dict.fromkeys(tasks)
    )
    split = pr.split_items(tasks, config.heldout_share, config.seed)
    orders = pr.stream_orders(split, config.orderings, config.seed)
    held = split.heldout
    b = settings.bandit
    laser = LaserSettings(alpha=b.alpha, ridge=b.ridge, epsilon=b.epsilon, warmup=b.warmup)

    with progress(1, "strategies", config.progress) as bar:
        lr = pr.run_laser_split(t, split, orders, config.seed, laser, keep)
        values, chosen = pr.heldout_values(t, split, lr.heldout, keep)
        bar.update(1)
    seconds = {rm: t.score_seconds.get(rm, np.zeros(len(tasks))) for rm in t.rms}
    laser_ms = 1000 * float(
        np.mean(
            [
                np.mean([seconds[a][i] for i, a in zip(held, arms, strict=True)])
                for arms in lr.heldout_arms
            ]
        )
    )
    all_ms = {rm: 1000 * float(seconds[rm][held].mean()) for rm in t.rms}
    cost = {
        "laser": laser_ms,
        "random_rm": float(np.mean(list(all_ms.values()))),
        "best_single": all_ms[chosen["best_single_rm"]],
        **{f"rm:{rm}": ms for rm, ms in all_ms.items()},
        "ensemble_mean": sum(all_ms.values()),
        "ensemble_vote": sum(all_ms.values()),
    }
    calls = {
        **{n: 1 for n in ("laser", "random_rm", "best_single", *(f"rm:{r}" for r in t.rms))},
        "ensemble_mean": len(t.rms),
        "ensemble_vote": len(t.rms),
        "first_sample": 0,
        "greedy": 0,
    }
    strategies: dict[str, Any] = {}
    for name, v in values.items():
        strategies[name] = {
            "label": rep.label(name, chosen),
            "heldout": round(pr.macro(v, held, tasks, keep), 4),
            "heldout_all_tasks": round(pr.macro(v, held, tasks, list(dict.fromkeys(tasks))), 4),
            "per_task": {k: round(x, 4) for k, x in pr.per_task(v, held, tasks).items()},
            "stream": round(pr.macro(v, split.stream, tasks, keep), 4),
            "rm_calls_per_item": calls.get(name),
            "rm_ms_per_item": None if name not in cost else round(cost[name], 2),
        }
    strategies["laser"]["heldout_orderings"] = rep.stats(lr.heldout_macro)
    strategies["laser"]["stream"] = round(float(np.mean(lr.stream_macro)), 4)
    strategies["laser"]["stream_orderings"] = rep.stats(lr.stream_macro)
    baselines = [n for n in values if n not in ("laser", "oracle", "oracle_rm_query")]
    ci = {
        n: pr.paired_bootstrap(values["laser"] - values[n], held, tasks, keep, seed=config.seed)
        for n in baselines
    }

    # Along the stream: regret against the best RM per task (chosen on the stream), and which
    # RM LASeR used for each task as the stream went on.
    ref = np.array([values["oracle_rm_task"][o] for o in orders])
    single = np.array([values["best_single"][o] for o in orders])
    rnd = np.array([values["random_rm"][o] for o in orders])
    regret = {
        "laser": pr.regret_curve(lr.stream_steps, ref),
        "random_rm": pr.regret_curve(rnd, ref),
        "best_single": pr.regret_curve(single, ref),
    }
    per_task_stream = len(split.stream) // max(1, len(dict.fromkeys(tasks)))
    window = max(5, per_task_stream // 10)
    shares = pr.shares_over_time(t, orders, lr.stream_arms, window)
    usage = {
        task: {rm: float(np.mean(v)) for rm, v in by_rm.items()} for task, by_rm in shares.items()
    }
    heldout_usage: dict[str, dict[str, float]] = {}
    arr = np.asarray(tasks)
    for task in dict.fromkeys(tasks):
        pos = [j for j, i in enumerate(held) if arr[i] == task]
        heldout_usage[task] = {
            rm: round(float(np.mean([[arms[j] == rm for j in pos] for arms in lr.heldout_arms])), 4)
            for rm in t.rms
        }

    robustness: dict[str, Any] = {}
    tables = {"base": t}
    if col.noise_scores is not None:
        noisy = t.with_scores({"noise": col.noise_scores}, {"noise": np.zeros(len(tasks))})
        tables["noise"] = noisy
        nlr = pr.run_laser_split(noisy, split, orders, config.seed, laser, keep)
        nvalues, nchosen = pr.heldout_values(noisy, split, nlr.heldout, keep)
        robustness["noise"] = {
            n: {
                "without": round(pr.macro(values[n], held, tasks, keep), 4),
                "with": round(pr.macro(nvalues[n], held, tasks, keep), 4),
                "change": round(
                    pr.macro(nvalues[n], held, tasks, keep)
                    - pr.macro(values[n], held, tasks, keep),
                    4,
                ),
            }
            for n in ("laser", "random_rm", "best_single", "ensemble_mean", "ensemble_vote")
        }
        robustness["noise"]["rm:noise"] = {
            "without": None,
            "with": round(pr.macro(nvalues["rm:noise"], held, tasks, keep), 4),
            "change": None,
        }
        robustness["noise_laser_share"] = round(
            float(np.mean([[a == "noise" for a in arms] for arms in nlr.stream_arms])), 4
        )
        robustness["noise_best_single"] = nchosen["best_single_rm"]
    late = [config.late_rm or chosen["best_single_rm"]]
    if "noise" in tables:
        late.append("noise")
    at = len(split.stream) // 2
    midway = []
    for rm in late:
        table = tables["noise"] if rm == "noise" else t
        if rm not in table.rms:
            raise ValueError(f"late_rm {rm!r} is not one of the RMs {t.rms}")
        if len(table.rms) < 2:
            continue
        mid = pr.run_laser_split(
            table, split, orders, config.seed, laser, keep, add_midway=(rm, at)
        )
        start = nlr if rm == "noise" else lr
        never = pr.run_laser_split(
            table, split, orders, config.seed, laser, keep, rms=[r for r in table.rms if r != rm]
        )
        q = (3 * len(split.stream)) // 4
        midway.append(
            {
                "rm": rm,
                "added_at": at,
                "share_after": round(
                    float(np.mean([[a == rm for a in arms[at:]] for arms in mid.stream_arms])), 4
                ),
                "share_last_quarter": round(
                    float(np.mean([[a == rm for a in arms[q:]] for arms in mid.stream_arms])), 4
                ),
                "heldout": {
                    "midway": round(float(np.mean(mid.heldout_macro)), 4),
                    "from_start": round(float(np.mean(start.heldout_macro)), 4),
                    "never": round(float(np.mean(never.heldout_macro)), 4),
                },
            }
        )
    robustness["midway"] = midway

    with progress(1, "settings ablation (stream only)", config.progress) as bar:
        grid = pr.ablation(
            t,
            orders,
            config.seed,
            laser,
            keep,
            contexts=["features", *t.context_variants, "bias"],
            warmups=config.ablation_warmups,
            alphas=config.alphas,
        )
        bar.update(1)

    task_info = {}
    for task in dict.fromkeys(tasks):
        kinds = {it.kind for it in col.items if it.task == task}
        task_info[task] = {
            "items": sum(1 for x in tasks if x == task),
            "stream": int(sum(1 for i in split.stream if tasks[i] == task)),
            "heldout": int(sum(1 for i in held if tasks[i] == task)),
            "metric": "F1" if kinds == {"span"} else "accuracy",
            "headline": task in keep,
        }
    return {
        "model": col.stats.get("model", ""),
        "rms": t.rms,
        "n_items": len(tasks),
        "tasks": task_info,
        "headline_tasks": keep,
        "context_dim": int(t.contexts.shape[1]),
        "context": settings.featurizer.context,
        "laser": asdict(laser),
        "chosen_on_stream": chosen,
        "strategies": strategies,
        "ci": ci,
        "regret": regret,
        "shares_over_time": {"window": window, "by_task": shares},
        "laser_stream_usage": usage,
        "laser_heldout_usage": heldout_usage,
        "robustness": robustness,
        "ablation": grid,
        "mean_candidate_quality": round(float(t.quality.mean()), 4),
        "heldout_items": held.tolist(),
    }


def pilot_table(col: Collected) -> dict[str, Any]:
    """Per task: each RM's accuracy/F1 when it picks, the oracle and no reranking: is there
    anything to select, before paying for a full run?"""
    t = col.table
    idx = np.arange(len(t.tasks))
    rows: dict[str, dict[str, float]] = {}
    values = pr.per_item_values(t)
    for name, v in values.items():
        rows[name] = {k: round(x, 4) for k, x in pr.per_task(v, idx, t.tasks).items()}
    return {"items": len(t.tasks), "rows": rows, "stats": col.stats}
