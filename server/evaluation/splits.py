"""The stream / held-out protocol: LASeR learns online on one split, everyone is scored on
the other.

1. Items are split per task (seeded): a **stream** split and a **held-out** split.
2. On the stream, LASeR learns online from the correctness of the answer it picked, over
   `orderings` seeded orders. The best single RM and the best RM per task "in hindsight" are
   chosen on the stream too; so are LASeR's own settings (the ablation grid).
3. On the held-out split every strategy is scored; LASeR with its bandit frozen (the RM
   with the highest expected reward per item: no exploration, no updates). Nothing is ever
   chosen on held-out items.
4. LASeR minus each baseline, per held-out item (LASeR averaged over orderings), with a
   paired bootstrap 95% interval over items, resampled within each task.

>>> s = split_items(["a"] * 4 + ["b"] * 4, heldout_share=0.5, seed=0)
>>> len(s.stream), len(s.heldout)
(4, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from itertools import product
from typing import Any

import numpy as np

from laser.server.evaluation.strategies import (
    FloatArray,
    IntArray,
    LaserSettings,
    Table,
    frozen_arms,
    laser_context,
    learn_laser,
    run_ensemble_mean,
    run_ensemble_vote,
    run_first,
    run_fixed,
    run_greedy,
    run_oracle,
    run_oracle_rm_query,
)


@dataclass(frozen=True)
class Split:
    stream: IntArray
    heldout: IntArray


def split_items(tasks: Sequence[str], heldout_share: float = 0.5, seed: int = 0) -> Split:
    """Per task, a seeded `heldout_share` of the items is held out; the rest is the stream."""
    arr = np.asarray(tasks)
    stream, held = [], []
    for k, task in enumerate(dict.fromkeys(tasks)):
        rows = np.flatnonzero(arr == task)
        rows = np.random.default_rng([seed, 7919, k]).permutation(rows)
        cut = round(heldout_share * len(rows))
        held.extend(rows[:cut].tolist())
        stream.extend(rows[cut:].tolist())
    return Split(np.array(sorted(stream), dtype=np.int64), np.array(sorted(held), dtype=np.int64))


def stream_orders(split: Split, count: int, seed: int) -> list[IntArray]:
    return [
        np.random.default_rng([seed, 104729, k]).permutation(split.stream) for k in range(count)
    ]


# -- per-item values --------------------------------------------------------------------------
def per_item_values(t: Table) -> dict[str, FloatArray]:
    """Quality per item of every strategy that needs no learning (`strategies.py`): each
    single RM, the two ensembles, no reranking, greedy decoding, the per-query RM oracle and
    the oracle."""
    values: dict[str, FloatArray] = {f"rm:{rm}": run_fixed(t, rm).quality for rm in t.rms}
    values["ensemble_mean"] = run_ensemble_mean(t).quality
    values["ensemble_vote"] = run_ensemble_vote(t).quality
    values["first_sample"] = run_first(t).quality
    greedy = run_greedy(t)
    if greedy is not None:
        values["greedy"] = greedy.quality
    values["oracle_rm_query"] = run_oracle_rm_query(t).quality
    values["oracle"] = run_oracle(t).quality
    return values


def macro(values: FloatArray, items: IntArray, tasks: Sequence[str], keep: Sequence[str]) -> float:
    """Mean over the tasks in `keep` of each task's mean of `values` over `items`."""
    arr = np.asarray(tasks)[items]
    means = [values[items][arr == task].mean() for task in keep if (arr == task).any()]
    return float(np.mean(means)) if means else float("nan")


def per_task(values: FloatArray, items: IntArray, tasks: Sequence[str]) -> dict[str, float]:
    arr = np.asarray(tasks)[items]
    return {task: float(values[items][arr == task].mean()) for task in dict.fromkeys(arr.tolist())}


def paired_bootstrap(
    diff: FloatArray,
    items: IntArray,
    tasks: Sequence[str],
    keep: Sequence[str],
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean over `keep` tasks of the per-task mean of `diff`, and its 95% interval from
    resampling items with replacement within each task."""
    arr = np.asarray(tasks)[items]
    groups = [diff[items][arr == task] for task in keep if (arr == task).any()]
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    for g in groups:
        draws += rng.choice(g, size=(resamples, len(g)), replace=True).mean(axis=1)
    draws /= len(groups)
    point = float(np.mean([g.mean() for g in groups]))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"diff": round(point, 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4)}


# -- LASeR over the stream, frozen on held-out --------------------------------------------------
@dataclass
class LaserResult:
    heldout: FloatArray
    """Per item (indexed like the table): held-out quality averaged over orderings (stream
    items hold 0)."""
    heldout_macro: list[float]
    """Held-out macro mean per ordering (its spread)."""
    stream_macro: list[float]
    """Online mean quality over the stream, macro over tasks, per ordering."""
    stream_steps: FloatArray
    """(orderings, stream length): quality at each stream step."""
    stream_arms: list[list[str]]
    """Per ordering, the RM chosen at each stream step."""
    heldout_arms: list[list[str]]
    """Per ordering, the RM deployed on each held-out item (in `split.heldout` order)."""


def run_laser_split(
    t: Table,
    split: Split,
    orders: Sequence[IntArray],
    seed: int,
    settings: LaserSettings,
    keep: Sequence[str],
    rms: Sequence[str] | None = None,
    add_midway: tuple[str, int] | None = None,
) -> LaserResult:
    ctx, _ = laser_context(t, settings.context)
    held_sum = np.zeros(len(t.tasks))
    held_macro, stream_macro, steps, s_arms, h_arms = [], [], [], [], []
    for k, order in enumerate(orders):
        bandit, run = learn_laser(t, order, seed * 1000 + k, settings, rms, add_midway)
        steps.append(run.quality[order])
        s_arms.append([str(run.arms[i]) for i in order])
        stream_macro.append(macro(run.quality, order, t.tasks, keep))
        arms = frozen_arms(bandit, ctx, split.heldout, t if settings.abstain else None)
        h_arms.append(arms)
        q = np.zeros(len(t.tasks))
        for i, arm in zip(split.heldout, arms, strict=True):
            q[i] = t.quality[i, int(np.argmax(t.scores[arm][i]))]
        held_sum += q
        held_macro.append(macro(q, split.heldout, t.tasks, keep))
    return LaserResult(
        held_sum / len(orders), held_macro, stream_macro, np.array(steps), s_arms, h_arms
    )


def heldout_values(
    t: Table, split: Split, laser: FloatArray, keep: Sequence[str]
) -> tuple[dict[str, FloatArray], dict[str, str]]:
    """Every strategy's per-item quality (held-out items meaningful), and which RM the
    stream chose for the hindsight rows."""
    fixed = per_item_values(t)
    # The single-RM baselines are over the RMs themselves, not ensemble arms.
    base = [r for r in t.rms if r not in t.ensemble_members]
    singles = {rm: fixed[f"rm:{rm}"] for rm in base}
    stream_score = {rm: macro(q, split.stream, t.tasks, keep) for rm, q in singles.items()}
    best_single = max(base, key=lambda rm: stream_score[rm])
    tasks = np.asarray(t.tasks)
    best_task = np.zeros(len(t.tasks))
    chosen: dict[str, str] = {"best_single_rm": best_single}
    for task in dict.fromkeys(t.tasks):
        rows = split.stream[tasks[split.stream] == task]
        best = max(base, key=lambda rm: float(singles[rm][rows].mean()))
        chosen[f"best_rm:{task}"] = best
        best_task[tasks == task] = singles[best][tasks == task]
    values: dict[str, FloatArray] = {
        "laser": laser,
        # A random RM's exact expectation: the mean of the single RMs' picks.
        "random_rm": np.mean([singles[rm] for rm in base], axis=0),
        "best_single": singles[best_single],
        **fixed,
        "oracle_rm_task": best_task,
    }
    return values, chosen


# -- the pieces of the report ---------------------------------------------------------------
def regret_curve(steps: FloatArray, best: FloatArray) -> list[float]:
    """Cumulative regret along the stream against a reference's per-step quality, mean over
    orderings (`steps`, `best`: (orderings, stream length))."""
    return [round(float(v), 3) for v in np.cumsum(best - steps, axis=1).mean(axis=0)]


def shares_over_time(
    t: Table, orders: Sequence[IntArray], arms: Sequence[Sequence[str]], window: int
) -> dict[str, dict[str, list[float]]]:
    """Per task, per RM: LASeR's share of that task's stream items, per window of `window`
    consecutive items of the task (mean over orderings)."""
    tasks = np.asarray(t.tasks)
    out: dict[str, dict[str, list[float]]] = {}
    for task in dict.fromkeys(t.tasks):
        per_order = []
        for order, chosen in zip(orders, arms, strict=True):
            per_order.append([a for i, a in zip(order, chosen, strict=True) if tasks[i] == task])
        length = len(per_order[0])
        out[task] = {}
        for rm in t.rms:
            row = []
            for s in range(0, length, window):
                row.append(
                    float(np.mean([[a == rm for a in p[s : s + window]] for p in per_order]))
                )
            out[task][rm] = [round(v, 3) for v in row]
    return out


def ablation(
    t: Table,
    orders: Sequence[IntArray],
    seed: int,
    base: LaserSettings,
    keep: Sequence[str],
    contexts: Sequence[str],
    warmups: Sequence[int],
    alphas: Sequence[float],
) -> list[dict[str, Any]]:
    """LASeR's online mean quality over the STREAM (macro over tasks, mean over orderings) for
    each combination: what the serving defaults are chosen by. Held-out items are not used."""
    rows = []
    for context, warmup, alpha in product(contexts, warmups, alphas):
        # The served learning rule (side observations, abstention, policy) with these three
        # settings changed.
        cfg = replace(base, alpha=alpha, warmup=warmup, context=context)
        vals = [
            macro(learn_laser(t, o, seed * 1000 + k, cfg)[1].quality, o, t.tasks, keep)
            for k, o in enumerate(orders)
        ]
        ctx, _ = laser_context(t, context)
        rows.append(
            {
                **asdict(cfg),
                "dim": int(ctx.shape[1]),
                "stream_mean": round(float(np.mean(vals)), 4),
                "stream_std": round(float(np.std(vals)), 4),
            }
        )
    return sorted(rows, key=lambda r: -r["stream_mean"])
