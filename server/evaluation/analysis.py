"""What the evaluation reports, computed from the collected table (`collect.collect`): the
stream / held-out protocol (`protocol.py`) with every strategy, CIs, regret, RM shares, cost,
robustness and the settings ablation; or, for a pilot, the per-task RM table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from laser.server.config import Settings
from laser.server.evaluation import deployment as dep
from laser.server.evaluation import report as rep
from laser.server.evaluation import splits as pr
from laser.server.evaluation.config import Collected, EvalConfig
from laser.server.evaluation.labels import label
from laser.server.evaluation.strategies import (
    FloatArray,
    IntArray,
    LaserSettings,
    Table,
    observed_rms,
)
from laser.server.runtime import progress


@dataclass(frozen=True)
class _Protocol:
    """The stream / held-out protocol as this analysis runs it: what every section reads."""

    table: Table
    split: pr.Split
    orders: list[IntArray]
    seed: int
    laser: LaserSettings
    keep: list[str]
    """The headline tasks."""

    @property
    def tasks(self) -> list[str]:
        return self.table.tasks

    def macro(self, values: FloatArray, items: IntArray) -> float:
        """The headline mean (over the `keep` tasks) of `values` over `items`."""
        return pr.macro(values, items, self.tasks, self.keep)

    def run_laser(
        self,
        table: Table,
        rms: list[str] | None = None,
        add_midway: tuple[str, int] | None = None,
    ) -> pr.LaserResult:
        """LASeR learning over every ordering of the stream, then frozen on held-out items."""
        return pr.run_laser_split(
            table, self.split, self.orders, self.seed, self.laser, self.keep, rms, add_midway
        )


def analyse(col: Collected, config: EvalConfig, settings: Settings) -> dict[str, Any]:
    """The stream / held-out protocol (`protocol.py`): LASeR learns on the stream, every
    strategy is scored on the held-out split; CIs, regret, RM shares, cost, robustness and the
    settings ablation."""
    t = col.table
    split = pr.split_items(t.tasks, config.heldout_share, config.seed)
    keep, gaps = dep.headline_by_rule(t, split, config.headline_min_gap)
    p = _Protocol(
        table=t,
        split=split,
        orders=pr.stream_orders(split, config.orderings, config.seed),
        seed=config.seed,
        laser=LaserSettings.from_bandit(settings.bandit),
        keep=keep or list(dict.fromkeys(t.tasks)),
    )
    with progress(1, "strategies", config.progress) as bar:
        lr = p.run_laser(t)
        values, chosen = pr.heldout_values(t, split, lr.heldout, p.keep)
        bar.update(1)
    strategies = _strategy_rows(p, values, chosen, lr)
    window, shares = _stream_shares(p, lr)
    robustness = _robustness(p, col.noise_scores, values, chosen, lr, config.late_rm)
    with progress(1, "settings ablation (stream only)", config.progress) as bar:
        grid = _ablation(p, config)
        bar.update(1)
    held = split.heldout
    baselines = {n: p.macro(values[n], held) for n in ("best_single", "ensemble_mean")}
    baselines["ensemble_vote"] = p.macro(values["ensemble_vote"], held)
    with progress(1, "learning rules and priors (stream choice)", config.progress) as bar:
        rules = dep.rules(t, split, p.orders, p.seed, p.laser, p.keep, baselines)
        transfer = dep.priors_transfer(t, split, p.orders, p.seed, p.laser, values, p.keep)
        bar.update(1)
    strategies["laser"]["spread"] = dep.spread(lr.heldout_macro, baselines)
    return {
        "model": col.stats.get("model", ""),
        "rms": t.rms,
        "n_items": len(t.tasks),
        "tasks": _task_info(p, col),
        "headline_tasks": p.keep,
        "headline_rule": {
            "rule": dep.HEADLINE_RULE.format(gap=100 * config.headline_min_gap),
            "oracle_minus_random_on_stream": gaps,
        },
        "families": dep.families(t, split, values, p.keep, p.seed),
        "rules": rules,
        "priors_transfer": transfer,
        "context_dim": int(t.contexts.shape[1]),
        "context": settings.featurizer.context,
        "laser": asdict(p.laser),
        "chosen_on_stream": chosen,
        "strategies": strategies,
        "ci": _laser_minus_baselines(p, values),
        "regret": _regret(p, values, lr),
        "shares_over_time": {"window": window, "by_task": shares},
        "laser_stream_usage": {
            task: {rm: float(np.mean(v)) for rm, v in by_rm.items()}
            for task, by_rm in shares.items()
        },
        "laser_heldout_usage": _heldout_usage(p, lr),
        "robustness": robustness,
        "ablation": grid,
        "mean_candidate_quality": round(float(t.quality.mean()), 4),
        "heldout_items": split.heldout.tolist(),
    }


# -- held-out results per strategy ------------------------------------------------------------
def _strategy_rows(
    p: _Protocol, values: dict[str, FloatArray], chosen: dict[str, str], lr: pr.LaserResult
) -> dict[str, Any]:
    """Per strategy: held-out (headline and all tasks, per task), stream, and its cost."""
    t, tasks, held = p.table, p.tasks, p.split.heldout
    cost = _rm_ms_per_item(t, held, lr, chosen, p.laser)
    calls = _rm_calls_per_item(t, p.laser)
    strategies: dict[str, Any] = {}
    for name, v in values.items():
        strategies[name] = {
            "label": label(name, chosen),
            "heldout": round(p.macro(v, held), 4),
            "heldout_all_tasks": round(pr.macro(v, held, tasks, list(dict.fromkeys(tasks))), 4),
            "per_task": {k: round(x, 4) for k, x in pr.per_task(v, held, tasks).items()},
            "stream": round(p.macro(v, p.split.stream), 4),
            "rm_calls_per_item": calls.get(name),
            "rm_ms_per_item": None if name not in cost else round(cost[name], 2),
        }
    strategies["laser"]["heldout_orderings"] = rep.stats(lr.heldout_macro)
    strategies["laser"]["stream"] = round(float(np.mean(lr.stream_macro)), 4)
    strategies["laser"]["stream_orderings"] = rep.stats(lr.stream_macro)
    return strategies


def _rm_ms_per_item(
    t: Table, held: IntArray, lr: pr.LaserResult, chosen: dict[str, str], laser: LaserSettings
) -> dict[str, float]:
    """Measured RM scoring time per held-out item of each strategy that scores, in ms.
    LASeR's is what serving spends: the RMs scored on every request for side observations
    (`observed_rms`), plus the deployed RM when it is not one of them; an ensemble arm over
    observed members costs nothing more."""
    seconds = {rm: t.score_seconds.get(rm, np.zeros(len(t.tasks))) for rm in t.rms}
    observed = observed_rms(t, t.rms, laser.observe_ms, t.quality.shape[1])
    paid = [r for r in observed if r not in t.ensemble_members]
    always = sum((seconds[r] for r in paid), np.zeros(len(t.tasks)))
    laser_ms = 1000 * float(
        np.mean(
            [
                np.mean(
                    [
                        always[i] + (0.0 if a in observed else seconds[a][i])
                        for i, a in zip(held, arms, strict=True)
                    ]
                )
                for arms in lr.heldout_arms
            ]
        )
    )
    base = [r for r in t.rms if r not in t.ensemble_members]
    all_ms = {rm: 1000 * float(seconds[rm][held].mean()) for rm in t.rms}
    return {
        "laser": laser_ms,
        "random_rm": float(np.mean([all_ms[r] for r in base])),
        "best_single": all_ms[chosen["best_single_rm"]],
        **{f"rm:{rm}": ms for rm, ms in all_ms.items()},
        "ensemble_mean": sum(all_ms[r] for r in base),
        "ensemble_vote": sum(all_ms[r] for r in base),
    }


def _rm_calls_per_item(t: Table, laser: LaserSettings) -> dict[str, int]:
    """RM calls per item; LASeR's counts the RMs it observes on every request (ensemble arms
    are computed from their members, not called) and the deployed one."""
    base = [r for r in t.rms if r not in t.ensemble_members]
    observed = observed_rms(t, t.rms, laser.observe_ms, t.quality.shape[1])
    return {
        **{n: 1 for n in ("random_rm", "best_single", *(f"rm:{r}" for r in t.rms))},
        "laser": max(1, len([r for r in observed if r in base])),  # + a costly one deployed
        "ensemble_mean": len(base),
        "ensemble_vote": len(base),
        "first_sample": 0,
        "greedy": 0,
    }


def _laser_minus_baselines(
    p: _Protocol, values: dict[str, FloatArray]
) -> dict[str, dict[str, float]]:
    """LASeR minus each baseline per held-out item, with its paired bootstrap interval."""
    baselines = [n for n in values if n not in ("laser", "oracle", "oracle_rm_query")]
    return {
        n: pr.paired_bootstrap(
            values["laser"] - values[n], p.split.heldout, p.tasks, p.keep, seed=p.seed
        )
        for n in baselines
    }


# -- along the stream -------------------------------------------------------------------------
def _regret(
    p: _Protocol, values: dict[str, FloatArray], lr: pr.LaserResult
) -> dict[str, list[float]]:
    """Regret along the stream against the best RM per task (chosen on the stream)."""
    ref = np.array([values["oracle_rm_task"][o] for o in p.orders])
    single = np.array([values["best_single"][o] for o in p.orders])
    rnd = np.array([values["random_rm"][o] for o in p.orders])
    return {
        "laser": pr.regret_curve(lr.stream_steps, ref),
        "random_rm": pr.regret_curve(rnd, ref),
        "best_single": pr.regret_curve(single, ref),
    }


def _stream_shares(
    p: _Protocol, lr: pr.LaserResult
) -> tuple[int, dict[str, dict[str, list[float]]]]:
    """(window, shares): which RM LASeR used for each task as the stream went on, per window
    of a tenth of a task's stream items (at least 5)."""
    per_task_stream = len(p.split.stream) // max(1, len(dict.fromkeys(p.tasks)))
    window = max(5, per_task_stream // 10)
    return window, pr.shares_over_time(p.table, p.orders, lr.stream_arms, window)


def _heldout_usage(p: _Protocol, lr: pr.LaserResult) -> dict[str, dict[str, float]]:
    """Per task, the share of held-out items frozen LASeR deploys each RM on."""
    held = p.split.heldout
    heldout_usage: dict[str, dict[str, float]] = {}
    arr = np.asarray(p.tasks)
    for task in dict.fromkeys(p.tasks):
        pos = [j for j, i in enumerate(held) if arr[i] == task]
        heldout_usage[task] = {
            rm: round(float(np.mean([[arms[j] == rm for j in pos] for arms in lr.heldout_arms])), 4)
            for rm in p.table.rms
        }
    return heldout_usage


# -- robustness -------------------------------------------------------------------------------
def _robustness(
    p: _Protocol,
    noise_scores: FloatArray | None,
    values: dict[str, FloatArray],
    chosen: dict[str, str],
    lr: pr.LaserResult,
    late_rm: str | None,
) -> dict[str, Any]:
    """A noise RM added to the portfolio (when collected), and an RM added midway."""
    robustness: dict[str, Any] = {}
    tables = {"base": p.table}
    results = {"base": lr}
    if noise_scores is not None:
        noisy = p.table.with_scores({"noise": noise_scores}, {"noise": np.zeros(len(p.tasks))})
        tables["noise"] = noisy
        results["noise"] = p.run_laser(noisy)
        robustness.update(_noise_rm(p, noisy, values, results["noise"]))
    late = [late_rm or chosen["best_single_rm"]]
    if "noise" in tables:
        late.append("noise")
    robustness["midway"] = _added_midway(p, late, tables, results)
    return robustness


def _noise_rm(
    p: _Protocol, noisy: Table, values: dict[str, FloatArray], nlr: pr.LaserResult
) -> dict[str, Any]:
    """Each strategy's held-out headline mean without and with the noise RM."""
    held = p.split.heldout
    nvalues, nchosen = pr.heldout_values(noisy, p.split, nlr.heldout, p.keep)
    noise: dict[str, Any] = {
        n: {
            "without": round(p.macro(values[n], held), 4),
            "with": round(p.macro(nvalues[n], held), 4),
            "change": round(p.macro(nvalues[n], held) - p.macro(values[n], held), 4),
        }
        for n in ("laser", "random_rm", "best_single", "ensemble_mean", "ensemble_vote")
    }
    noise["rm:noise"] = {
        "without": None,
        "with": round(p.macro(nvalues["rm:noise"], held), 4),
        "change": None,
    }
    return {
        "noise": noise,
        "noise_laser_share": round(
            float(np.mean([[a == "noise" for a in arms] for arms in nlr.stream_arms])), 4
        ),
        "noise_best_single": nchosen["best_single_rm"],
    }


def _added_midway(
    p: _Protocol,
    late: list[str],
    tables: dict[str, Table],
    results: dict[str, pr.LaserResult],
) -> list[dict[str, Any]]:
    """Each RM of `late` joining LASeR half-way through the stream: its share of LASeR's
    choices afterwards, and held-out means added midway, present from the start, never added.
    `tables`/`results`: the portfolio and LASeR's run on it, `base` and (with it) `noise`."""
    t = p.table
    at = len(p.split.stream) // 2
    q = (3 * len(p.split.stream)) // 4
    midway = []
    for rm in late:
        table = tables["noise"] if rm == "noise" else t
        if rm not in table.rms:
            raise ValueError(f"late_rm {rm!r} is not one of the RMs {t.rms}")
        if len(table.rms) < 2:
            continue
        mid = p.run_laser(table, add_midway=(rm, at))
        start = results["noise"] if rm == "noise" else results["base"]
        never = p.run_laser(table, rms=[r for r in table.rms if r != rm])
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
    return midway


# -- settings ablation and the tasks ----------------------------------------------------------
def _ablation(p: _Protocol, config: EvalConfig) -> list[dict[str, Any]]:
    """LASeR's stream mean for each context, warm-up and alpha (held-out items unused)."""
    t = p.table
    return pr.ablation(
        t,
        p.orders,
        p.seed,
        p.laser,
        p.keep,
        contexts=["features", *t.context_variants, "bias"],
        warmups=config.ablation_warmups,
        alphas=config.alphas,
    )


def _task_info(p: _Protocol, col: Collected) -> dict[str, dict[str, Any]]:
    """Per task: items in all, in the stream, held out; its metric; in the headline or not."""
    tasks = p.tasks
    task_info = {}
    metrics = col.stats.get("metrics", {})
    for task in dict.fromkeys(tasks):
        kinds = {it.kind for it in col.items if it.task == task}
        if not col.items:  # a replay from table.npz
            kinds = {"span"} if metrics.get(task) == "F1" else {"number"}
        task_info[task] = {
            "items": sum(1 for x in tasks if x == task),
            "stream": int(sum(1 for i in p.split.stream if tasks[i] == task)),
            "heldout": int(sum(1 for i in p.split.heldout if tasks[i] == task)),
            "metric": "F1" if kinds == {"span"} else "accuracy",
            "headline": task in p.keep,
        }
    return task_info


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
