"""What one deployment gets: the sections of the evaluation that look past the mean.

- `headline_by_rule`: which tasks enter the headline, by a rule fixed before any run (the
  task leaves room for selection: oracle minus a random RM at least `min_gap` on the STREAM
  split), never by who wins.
- `spread`: LASeR's held-out mean per ordering of the stream (one ordering = one deployment
  that met its traffic in that order): min, 10th percentile, median, and the share of
  orderings in which LASeR beats the best single RM, the score ensemble and the vote.
- `families`: the same numbers per generator family (`SUITES["family_a"]`, `"family_b"`).
- `rules`: the learning rules side by side (published LinUCB, side observations, abstention,
  Thompson sampling, the ensemble arm), stream and held-out; the serving default is chosen
  by the STREAM column only.
- `priors_transfer`: priors learnt on one family's items (`priors.learn_priors`), used by a
  deployment that then meets the other family: its stream and held-out, against a cold start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from laser.server.evaluation import data as eval_data
from laser.server.evaluation import splits as pr
from laser.server.evaluation.strategies import FloatArray, IntArray, LaserSettings, Table
from laser.server.priors import learn_priors

_MAIN: tuple[str, ...] = ("laser", "best_single", "ensemble_mean", "ensemble_vote", "random_rm")
_MAIN += ("oracle_rm_task", "oracle")
HEADLINE_RULE = "oracle minus a random RM >= {gap:.0f} points on the stream split"


def headline_by_rule(
    t: Table, split: pr.Split, min_gap: float = 0.10
) -> tuple[list[str], dict[str, float]]:
    """(headline tasks, per task oracle - random RM on the stream). A task where even the
    best candidate is rarely better than a random RM's pick leaves nothing to select."""
    values = pr.per_item_values(t)
    rnd = np.mean([values[f"rm:{rm}"] for rm in base_rms(t)], axis=0)
    gaps = {
        task: round(v, 4)
        for task, v in pr.per_task(values["oracle"] - rnd, split.stream, t.tasks).items()
    }
    # A task with no held-out items (a tiny one) cannot be scored, whatever its gap.
    held = set(np.asarray(t.tasks)[split.heldout].tolist())
    keep = [task for task, gap in gaps.items() if gap >= min_gap - 1e-9 and task in held]
    return keep, gaps


def base_rms(t: Table) -> list[str]:
    """The table's RMs that are not ensemble arms (what the baselines combine)."""
    return [r for r in t.rms if r not in t.ensemble_members]


def spread(
    heldout_macro: Sequence[float], baselines: dict[str, float]
) -> dict[str, float | dict[str, float]]:
    """LASeR's held-out mean per ordering: its distribution and how often it beats each
    baseline's (ordering-free) held-out mean."""
    a = np.asarray(heldout_macro, dtype=np.float64)
    return {
        "orderings": len(a),
        "mean": round(float(a.mean()), 4),
        "std": round(float(a.std()), 4),
        "min": round(float(a.min()), 4),
        "p10": round(float(np.percentile(a, 10)), 4),
        "median": round(float(np.median(a)), 4),
        "max": round(float(a.max()), 4),
        "share_beating": {name: round(float(np.mean(a > v)), 4) for name, v in baselines.items()},
    }


def family_of(task: str) -> str | None:
    for fam in ("family_a", "family_b"):
        if task in eval_data.SUITES[fam]:
            return fam
    return None


def families(
    t: Table,
    split: pr.Split,
    values: dict[str, FloatArray],
    keep: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    """Per generator family present: each main strategy's held-out mean over the family's
    headline tasks, and LASeR minus each baseline with its paired interval."""
    out: dict[str, Any] = {}
    for fam in ("family_a", "family_b"):
        tasks = [x for x in dict.fromkeys(t.tasks) if family_of(x) == fam and x in keep]
        if not tasks:
            continue
        held = split.heldout
        out[fam] = {
            "tasks": tasks,
            "heldout": {
                n: round(pr.macro(values[n], held, t.tasks, tasks), 4) for n in _MAIN if n in values
            },
            "ci": {
                n: pr.paired_bootstrap(values["laser"] - values[n], held, t.tasks, tasks, seed=seed)
                for n in ("best_single", "ensemble_mean", "ensemble_vote", "random_rm")
            },
        }
    return out


def rule_variants(base: LaserSettings, has_ensemble: bool) -> dict[str, LaserSettings]:
    """The learning rules compared: LASeR as published, then one change at a time."""
    published = dataclasses.replace(base, observe_ms=0.0, abstain=False, policy="ucb")
    side = dataclasses.replace(published, observe_ms=max(base.observe_ms, 5.0))
    rules = {
        "published": published,
        "abstain": dataclasses.replace(published, abstain=True),
        "abstain+thompson": dataclasses.replace(published, abstain=True, policy="thompson"),
        "side": side,
        "side+abstain": dataclasses.replace(side, abstain=True),
        "side+abstain+thompson": dataclasses.replace(side, abstain=True, policy="thompson"),
        "served": base,
    }
    if has_ensemble:
        rules["abstain, no ensemble arm"] = dataclasses.replace(published, abstain=True)
        rules["side+abstain, no ensemble arm"] = dataclasses.replace(side, abstain=True)
    return rules


def rules(
    t: Table,
    split: pr.Split,
    orders: list[IntArray],
    seed: int,
    base: LaserSettings,
    keep: Sequence[str],
    baselines: dict[str, float],
) -> dict[str, Any]:
    """Each learning rule's stream mean (what the choice is made on) and held-out mean and
    spread (reported beside it)."""
    ensembles = list(t.ensemble_members)
    out: dict[str, Any] = {}
    for name, cfg in rule_variants(base, bool(ensembles)).items():
        arms = [r for r in t.rms if r not in ensembles] if "no ensemble" in name else None
        lr = pr.run_laser_split(t, split, orders, seed, cfg, keep, arms)
        out[name] = {
            "rule": cfg.rule(),
            "stream": round(float(np.mean(lr.stream_macro)), 4),
            "stream_std": round(float(np.std(lr.stream_macro)), 4),
            "heldout": spread(lr.heldout_macro, baselines),
        }
    return out


def priors_transfer(
    t: Table,
    split: pr.Split,
    orders: list[IntArray],
    seed: int,
    base: LaserSettings,
    values: dict[str, FloatArray],
    keep: Sequence[str],
) -> dict[str, Any]:
    """For each family: priors learnt on every item of the OTHER family (labels there only),
    then LASeR on this family's stream, scored on its held-out items; beside the cold
    start, and priors learnt on this family's own stream split."""
    if t.kinds is None:
        return {}
    out: dict[str, Any] = {}
    tasks_arr = np.asarray(t.tasks)
    fam = np.array([family_of(x) for x in t.tasks], dtype=object)
    for target, source in (("family_b", "family_a"), ("family_a", "family_b")):
        tasks = [x for x in dict.fromkeys(t.tasks) if family_of(x) == target and x in keep]
        src_rows = np.flatnonzero(fam == source)
        if not tasks or not len(src_rows):
            continue
        in_target = np.isin(tasks_arr, tasks)
        sub = pr.Split(
            split.stream[in_target[split.stream]], split.heldout[in_target[split.heldout]]
        )
        sub_orders = [o[in_target[o]] for o in orders]
        own_rows = sub.stream
        variants = {
            "cold": None,
            f"priors from {source}": _priors(t, src_rows, base),
            "priors from this family's stream": _priors(t, own_rows, base),
        }
        row: dict[str, Any] = {"tasks": tasks}
        for label, priors in variants.items():
            cfg = dataclasses.replace(base, priors=priors)
            lr = pr.run_laser_split(t, sub, sub_orders, seed, cfg, tasks)
            bl = {
                n: pr.macro(values[n], sub.heldout, t.tasks, tasks)
                for n in ("best_single", "ensemble_mean")
            }
            row[label] = {
                "stream": round(float(np.mean(lr.stream_macro)), 4),
                "heldout": spread(lr.heldout_macro, bl),
                "ci_vs_best_single": pr.paired_bootstrap(
                    lr.heldout - values["best_single"], sub.heldout, t.tasks, tasks, seed=seed
                ),
                "ci_vs_ensemble": pr.paired_bootstrap(
                    lr.heldout - values["ensemble_mean"], sub.heldout, t.tasks, tasks, seed=seed
                ),
            }
        out[target] = row
    return out


def _priors(t: Table, rows: IntArray, base: LaserSettings) -> dict[str, Any]:
    assert t.kinds is not None
    kinds = [t.kinds[i] for i in rows]
    scores = {rm: s[rows] for rm, s in t.scores.items()}
    return learn_priors(kinds, t.quality[rows], scores, base.abstain_reward)
