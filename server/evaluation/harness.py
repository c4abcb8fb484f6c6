"""The evaluation harness: sample once, score once, then let every strategy choose.

1. Items: built-in tasks (`laser.server.evaluation.data`) and/or a user JSONL.
2. Prompts are rendered exactly as serving renders them (`prompts.prepare`: chat template,
   document template, truncation).
3. For every item the n candidates come from ONE engine call, and a greedy decode from one
   more; both are cached on disk, keyed by model, prompt and sampling settings.
4. Every RM scores every item's candidates once (cached too, with the measured time). RMs
   see the question, documents and the task hint, never the reference.
5. The strategies (`strategies.py`) choose from the same candidates over seeded orderings;
   `report.py` writes the Markdown/JSON report and plots.

Steps 1-4 and the contexts are `collect` (`collect.py`, one function per stage); `analysis.py`
runs the strategies; `evaluate` here ties them together and writes the files.

>>> # report = await evaluate(EvalConfig(tasks=["arithmetic"], items_per_task=10),
>>> #                         settings, engine, encoder)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from laser.server.config import Settings
from laser.server.engines.base import Engine
from laser.server.evaluation.analysis import analyse, pilot_table
from laser.server.evaluation.cache import Cache
from laser.server.evaluation.collect import collect
from laser.server.evaluation.config import Collected, EvalConfig
from laser.server.evaluation.tablefile import load_table, save_table
from laser.server.featurize import SentenceEncoder
from laser.server.rms.base import RewardModel


def _items_jsonl(col: Collected, heldout: set[int], path: Path) -> None:
    t = col.table
    with path.open("w", encoding="utf-8") as f:
        for i, it in enumerate(col.items):
            row = {
                "id": it.item.id,
                "task": it.task,
                "split": "heldout" if i in heldout else "stream",
                "prompt": it.item.prompt,
                "reference": it.item.reference,
                "documents_truncated": it.truncated,
                "candidates": [
                    {
                        "text": c.text,
                        "quality": float(t.quality[i, j]),
                        "scores": {rm: float(t.scores[rm][i, j]) for rm in t.rms},
                    }
                    for j, c in enumerate(col.generations[i].completions)
                ],
                "greedy": col.greedy[i].completions[0].text if col.greedy else None,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


async def evaluate(
    config: EvalConfig,
    settings: Settings,
    engine: Engine,
    encoder: SentenceEncoder,
    out_dir: str | Path,
    cache_dir: str | Path | None,
    command: str = "",
    reward_models: dict[str, RewardModel] | None = None,
) -> dict[str, Any]:
    """Collect (cached), analyse, and write the report into `out_dir`; returns the report
    (with `config.pilot`: only the per-task RM table, `pilot.md` / `pilot.json`).

    `cache_dir=None` disables the cache.
    """
    import platform

    from laser.server.evaluation import report as rep

    start = time.perf_counter()
    cache = Cache(Path(cache_dir) if cache_dir is not None else None)
    col = await collect(config, settings, engine, encoder, cache, reward_models)
    col.stats["model"] = engine.model_name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not config.pilot:  # the raw data every number comes from (`--replay` reads it)
        save_table(out / "table.npz", col.table, col.noise_scores, _metrics(col), col.stats)
    report = pilot_table(col) if config.pilot else analyse(col, config, settings)
    report["model"] = engine.model_name
    report["config"] = {k: v for k, v in asdict(config).items() if k != "progress"}
    report["command"] = command
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    report["stats"] = col.stats
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    if config.pilot:
        report["files"] = rep.write_pilot(report, out)
        return report
    _items_jsonl(col, set(report.pop("heldout_items")), out / "items.jsonl")
    report["files"] = [*rep.write(report, out), "items.jsonl", "table.npz"]
    return report


def _metrics(col: Collected) -> dict[str, str]:
    kinds: dict[str, set[str]] = {}
    for it in col.items:
        kinds.setdefault(it.task, set()).add(it.kind)
    return {task: "F1" if k == {"span"} else "accuracy" for task, k in kinds.items()}


def replay(
    config: EvalConfig, settings: Settings, table_dir: str | Path, out_dir: str | Path, command: str
) -> dict[str, Any]:
    """The report recomputed from a `table.npz` (no model): every number of a report comes
    from its table and the settings, so this reproduces it, or shows what other settings
    would give on the same candidates."""
    import platform

    from laser.server.evaluation import report as rep

    start = time.perf_counter()
    table, noise, metrics, stats = load_table(Path(table_dir) / "table.npz")
    col = Collected([], [], None, table, noise, {**stats, "metrics": metrics})
    report = analyse(col, config, settings)
    report.pop("heldout_items")
    report["model"] = stats.get("model", "")
    report["config"] = {k: v for k, v in asdict(config).items() if k != "progress"}
    report["command"] = command
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    report["stats"] = stats
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = rep.write(report, out)
    if Path(table_dir).resolve() != out.resolve():
        save_table(out / "table.npz", table, noise, metrics, stats)
        report["files"].append("table.npz")
    return report
