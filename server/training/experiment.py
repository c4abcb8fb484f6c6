"""The training experiment: does the DPO loop make the policy better, and does LASeR choose
RMs as well as the alternatives? (`bench/train_experiment.py` runs it.)

Two kinds of query where different RMs are right (generated arithmetic, where the `arith`
verifier knows the answer; one-document QA, where `grounding` checks the answer against the
document), mixed in every iteration. Items are drawn per kind and split before anything runs
(`split_items`): held-out items (graded greedy before and after; QA by token F1), a choice
split of training-like prompts on which the best fixed RM per kind is chosen by graded
top picks (references are read there and on held-out items only), and the training
prompts. No held-out item is trained on, chosen on or put in the probe (`check_split`).

Every selector then trains from the same starting policy on the same prompts, batches and
seeds (`RUNS`): LASeR (UCB, the label-free `probe` reward) on two seeds, the score ensemble
on two, random, sequential (round robin) and the best fixed RM per kind on one. Each run is
a `laser-server train` process writing its own folder; the experiment skips finished runs
and resumes an interrupted one from its last checkpoint, so re-running the command after an
interruption goes on where it stopped. `report` turns the folders into `experiment.json`
(accuracy per selector and kind, paired bootstrap 95% intervals for after - before and for
LASeR minus each baseline, wall time and where it went, RM share per kind over steps) and
the plots.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from laser.server.data import PromptItem, arithmetic_items, write_prompts
from laser.server.training.report import read_steps

log = logging.getLogger("laser.server.training")

QA_DOC_CHARS = 700
"""QA documents are cut to about this many characters (~170 tokens): a DPO step's forward and
backward passes over long documents cost minutes on a CPU."""

KINDS = ("math", "qa")


@dataclass(frozen=True)
class Run:
    name: str
    selector: str
    seed: int


RUNS = (
    Run("ensemble-s0", "ensemble", 0),
    Run("fixed-s0", "fixed", 0),
    Run("random-s0", "random", 0),
    Run("sequential-s0", "sequential", 0),
    Run("ensemble-s1", "ensemble", 1),
    Run("laser-s0", "laser", 0),
    Run("laser-s1", "laser", 1),
)


def _key(it: PromptItem) -> tuple[str, tuple[str, ...]]:
    return it.prompt, tuple(it.documents or ())


def _draw(kind: str, n: int, seed: int) -> list[PromptItem]:
    from laser.server.evaluation.data import longqa_items

    if kind == "math":
        return arithmetic_items(n, seed=seed)
    return longqa_items(n, seed=seed, doc_chars=QA_DOC_CHARS)


def split_items(
    heldout: int, choice: int, train: int, seed: int = 0
) -> dict[str, list[PromptItem]]:
    """Per kind of query, `heldout` + `choice` + `train` distinct items (no two with the
    same question and documents), dealt into the three splits in that order."""
    out: dict[str, list[PromptItem]] = {"heldout": [], "choice": [], "train": []}
    for k, kind in enumerate(KINDS):
        need = heldout + choice + train
        items: dict[tuple[str, tuple[str, ...]], PromptItem] = {}
        draw = 0
        while len(items) < need:
            for it in _draw(kind, 2 * need, seed * 1000 + k * 100 + draw):
                items.setdefault(_key(it), it)
            draw += 1
            if draw > 20:
                raise ValueError(f"{kind}: only {len(items)} distinct items, need {need}")
        pool = list(items.values())[:need]
        out["heldout"] += pool[:heldout]
        out["choice"] += pool[heldout : heldout + choice]
        out["train"] += pool[heldout + choice :]
    check_split(out)
    return out


def check_split(splits: dict[str, list[PromptItem]]) -> None:
    """No held-out item (question and documents) appears among the choice or training
    prompts; raises ValueError otherwise."""
    held = {_key(it) for it in splits["heldout"]}
    for name in ("choice", "train"):
        leaked = [it for it in splits[name] if _key(it) in held]
        if leaked:
            raise ValueError(f"{len(leaked)} held-out items are in the {name} split")


def write_splits(out: Path, splits: dict[str, list[PromptItem]]) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, items in splits.items():
        path = out / f"{name}.jsonl"
        if not path.exists():  # a resumed experiment keeps its items
            write_prompts(path, items)
        paths[name] = str(path)
    return paths


# -- choosing the best fixed RM per kind (on the choice split, never on held-out items) -----
async def choose_fixed(cfg: Any, n: int) -> dict[str, Any]:
    """Sample `n` responses per choice prompt with the starting policy, let every RM pick
    its top one, grade the picks with the references: the mean grade per kind and RM, and
    the best RM per kind (ties: the first in the RM list)."""
    from laser.server.engines.base import Sampling
    from laser.server.rms.base import Query
    from laser.server.training.parts import build_parts
    from laser.server.training.report import item_quality

    parts = build_parts(cfg)
    try:
        sampling = Sampling(n, cfg.max_tokens, cfg.temperature)
        gens = await parts.engine.generate_batch(parts.prompts, sampling, None)
        grades: dict[str, dict[str, list[float]]] = {}
        for it, prompt, gen in zip(parts.items, parts.prompts, gens, strict=True):
            texts = [c.text for c in gen.completions]
            query = Query(it.prompt, prompt, it.documents, it.task, None)
            for name, rm in parts.rms.items():
                scores = [float(s) for s in await rm.score(query, texts)]
                top = texts[int(np.argmax(scores))]
                grades.setdefault(it.task or "all", {}).setdefault(name, []).append(
                    item_quality(top, it)
                )
    finally:
        parts.engine.shutdown()
    means = {k: {rm: float(np.mean(v)) for rm, v in by.items()} for k, by in grades.items()}
    best = {k: max(by, key=lambda rm: by[rm]) for k, by in means.items()}
    items = {k: len(next(iter(by.values()))) for k, by in grades.items()}
    return {"mean_grade": means, "best": best, "items": items, "n": n}


# -- the runs ---------------------------------------------------------------------------------
def run_config(base: dict[str, Any], run: Run, fixed: dict[str, str], out: Path) -> dict[str, Any]:
    cfg = {**base, "selector": run.selector, "seed": run.seed, "output_dir": str(out / run.name)}
    if run.selector == "fixed":
        cfg["fixed_rm_by_task"] = fixed
    if run.selector != "laser":
        cfg.pop("bandit_reward", None)
    return cfg


def launch(cfg: dict[str, Any], folder: Path, cache_dir: str, progress: bool = True) -> None:
    """One run as its own `laser-server train` process, resumed when it has a checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(cfg, indent=1))
    cmd = [
        str(Path(sys.executable).parent / "laser-server"),
        "train",
        "--config",
        str(path),
        "--cache-dir",
        cache_dir,
    ]
    if (folder / "checkpoints" / "latest").exists():
        cmd.append("--resume")
    if not progress:
        cmd.append("--no-progress")
    log.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True)


# -- the report -------------------------------------------------------------------------------
def bootstrap_ci(
    diffs: Sequence[float], draws: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile) of the mean of `diffs` over bootstrap resamples of
    the items (paired: one difference per item)."""
    d = np.asarray(diffs, float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(draws, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(d.mean()), float(lo), float(hi)


def _ci(diffs: Sequence[float]) -> dict[str, float]:
    m, lo, hi = bootstrap_ci(diffs)
    return {"mean": round(100 * m, 2), "lo": round(100 * lo, 2), "hi": round(100 * hi, 2)}


STAGES = ("generate_s", "handover_s", "score_s", "dpo_s", "reward_s")


def report(out: Path, heldout: list[PromptItem]) -> dict[str, Any]:
    """`experiment.json` from the finished runs under `out` (see the module docstring)."""
    tasks = [it.task or "all" for it in heldout]
    summaries = {}
    for run in RUNS:
        path = out / run.name / "summary.json"
        if path.exists():
            summaries[run.name] = json.loads(path.read_text())
    if not summaries:
        raise ValueError(f"no finished run under {out}")
    before = np.asarray(next(iter(summaries.values()))["eval_before"]["per_item"], float)
    after = {name: np.asarray(s["eval_after"]["per_item"], float) for name, s in summaries.items()}
    selectors: dict[str, list[str]] = {}
    for run in RUNS:
        if run.name in after:
            selectors.setdefault(run.selector, []).append(run.name)
    # A selector's score per item: the mean over its seeds.
    sel_after = {s: np.mean([after[n] for n in names], axis=0) for s, names in selectors.items()}
    masks = {"all": np.ones(len(tasks), bool)} | {
        k: np.asarray([t == k for t in tasks]) for k in dict.fromkeys(tasks)
    }

    def by_mask(values: np.ndarray) -> dict[str, float]:
        return {k: round(100 * float(values[m].mean()), 2) for k, m in masks.items()}

    table: dict[str, Any] = {"before": by_mask(before)}
    for sel, vals in sel_after.items():
        table[sel] = {
            "seeds": selectors[sel],
            "after": by_mask(vals),
            "after_per_seed": {n: by_mask(after[n]) for n in selectors[sel]},
            "after_minus_before": {k: _ci((vals - before)[m]) for k, m in masks.items()},
        }
    if "laser" in sel_after:
        for sel, vals in sel_after.items():
            if sel != "laser":
                table["laser"][f"minus_{sel}"] = {
                    k: _ci((sel_after["laser"] - vals)[m]) for k, m in masks.items()
                }
    steps_of = {name: read_steps(out / name / "steps.jsonl") for name in summaries}
    walls = {}
    for name, steps in steps_of.items():
        walls[name] = {
            "wall_s": round(summaries[name]["wall_s"], 1),
            "steps": len(steps),
            **{st: round(sum(s.get(st, 0.0) for s in steps), 1) for st in STAGES},
        }
    return {
        "items": {k: int(m.sum()) for k, m in masks.items()},
        "accuracy": table,
        "targets": targets(table, walls, selectors),
        "wall": walls,
        "rm_share": {name: rm_share(steps) for name, steps in steps_of.items()},
        "warm_start": {name: warm_start_steps(steps) for name, steps in steps_of.items()},
    }


def targets(
    table: dict[str, Any],
    walls: dict[str, dict[str, Any]],
    selectors: dict[str, list[str]],
) -> dict[str, Any]:
    """The issue's targets, read off the table: does some selector's held-out score rise
    (interval above 0); LASeR against the ensemble and random; LASeR's wall time against the
    ensemble's and sequential's (mean over seeds); LASeR against the fixed RM per kind."""
    rising = [
        s
        for s, row in table.items()
        if s != "before" and row["after_minus_before"]["all"]["lo"] > 0
    ]
    out: dict[str, Any] = {"selectors_that_rise": rising}
    if "laser" not in table:
        return out
    laser = table["laser"]
    for other in ("ensemble", "random", "fixed"):
        if f"minus_{other}" in laser:
            out[f"laser_minus_{other}"] = laser[f"minus_{other}"]
    wall = {
        s: float(np.mean([walls[n]["wall_s"] for n in names])) for s, names in selectors.items()
    }
    for other in ("ensemble", "sequential"):
        if other in wall:
            out[f"laser_wall_over_{other}"] = round(wall["laser"] / wall[other], 2)
    return out


def rm_share(steps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind of query, each RM's share of the prompts it was chosen for."""
    counts: dict[str, dict[str, int]] = {}
    for s in steps:
        arms = [rm for rm, c in s["rms"].items() for _ in range(c)]
        if len(arms) != len(s["tasks"]):
            arms = [s["rm"]] * len(s["tasks"])
        for task, rm in zip(s["tasks"], arms, strict=True):
            counts.setdefault(task, {}).setdefault(rm, 0)
            counts[task][rm] += 1
    return {
        t: {rm: round(c / sum(by.values()), 3) for rm, c in sorted(by.items())}
        for t, by in counts.items()
    }


def warm_start_steps(steps: list[dict[str, Any]]) -> int:
    """Steps until every RM used in the run had been tried for every kind it saw (the warm
    start's share of the run, for LASeR)."""
    seen: set[tuple[str, str]] = set()
    rms = {s["rm"] for s in steps if s["rm"] != "mixed"}
    kinds = {t for s in steps for t in s["tasks"]}
    for i, s in enumerate(steps, 1):
        for t in set(s["tasks"]):
            seen.add((t, s["rm"]))
        if len(seen) >= len(rms) * len(kinds):
            return i
    return len(steps)
