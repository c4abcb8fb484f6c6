"""The evaluation's settings and the values its stages pass on: `EvalConfig` (what to
evaluate), `EvalItem` (one rendered item), `CollectionRun` (what the stages of one collection
share), `Collected` (everything the strategies need)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from laser.server.config import Settings
from laser.server.data import PromptItem
from laser.server.engines.base import Engine, Generation
from laser.server.evaluation import data as eval_data
from laser.server.evaluation.cache import Cache
from laser.server.evaluation.grading import KIND_TASK
from laser.server.evaluation.strategies import Table
from laser.server.rms.base import Query


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. Invalid values raise `ValueError`.

    >>> EvalConfig(tasks=["arithmetic", "longqa"], items_per_task=30, n=8).orderings
    20
    """

    tasks: list[str] = field(default_factory=lambda: list(eval_data.TASKS))
    """Built-in tasks (see `data.TASKS`); may be empty when `prompts_file` is given."""
    items_per_task: int = 30
    prompts_file: str | None = None
    """A user JSONL (`prompt`, `reference`, optional `document(s)`, `task`)."""
    n: int = 8
    max_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 1.0
    orderings: int = 20
    """Seeded orders of the stream split that LASeR learns over (mean and spread)."""
    heldout_share: float = 0.5
    """Share of each task's items held out: scored with LASeR's bandit frozen, never used to
    choose anything."""
    headline_min_gap: float = 0.10
    """The headline rule, fixed before any run: a task enters the headline mean when its
    oracle beats a random RM's pick by at least this much on the STREAM split (there is
    something to select); the others are in the all-tasks mean (`deployment.py`)."""
    task_items: dict[str, int] = field(default_factory=dict)
    """Items for particular tasks instead of `items_per_task` (e.g. {"gpqa": 100})."""
    replay: bool = False
    """The items come from a saved table (`--replay`), not from tasks or a prompts file."""
    pilot: bool = False
    """Only the per-task RM table (is there anything to select?), no strategies."""
    seed: int = 0
    """Seeds item sampling, orderings, LinUCB and the random-RM baseline."""
    greedy: bool = True
    noise_rm: bool = True
    """Add an RM that returns noise and report each strategy's drop."""
    late_rm: str | None = None
    """The RM added midway through the stream; default: the best single RM in hindsight."""
    concurrency: int = 8
    """Items whose generation runs at once (vLLM batches them)."""
    alphas: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    """LinUCB widths of the settings ablation (on the stream; the headline uses the
    settings' alpha)."""
    ablation_warmups: tuple[int, ...] = (0, 1, 2, 4)
    """Warm-up tries per RM and kind of query in the settings ablation."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("items_per_task", "n", "max_tokens", "orderings", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.tasks and not self.prompts_file and not self.replay:
            raise ValueError("nothing to evaluate: give tasks and/or a prompts file")
        if not 0 < self.heldout_share < 1:
            raise ValueError(f"heldout_share must be in (0, 1), got {self.heldout_share}")
        for task, count in self.task_items.items():
            if count < 1:
                raise ValueError(f"items for {task} must be >= 1, got {count}")
        if not (0 <= self.temperature <= 2 and 0 < self.top_p <= 1):
            raise ValueError("temperature must be in [0, 2] and top_p in (0, 1]")
        unknown = [t for t in self.tasks if t not in eval_data.TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(eval_data.TASKS)}")


@dataclass(frozen=True)
class EvalItem:
    task: str
    """The task name the report groups by (`arithmetic`, ..., or `user`/`user:<task>`)."""
    item: PromptItem
    kind: str
    prompt: str
    question: str
    documents: list[str]
    truncated: bool

    @property
    def query(self) -> Query:
        # The answer format as a hint, as a serving request may send it; never the reference.
        return Query(
            self.question, self.prompt, self.documents, self.item.task or KIND_TASK[self.kind]
        )


class EvalError(RuntimeError):
    """The evaluation could not run (a failing RM or engine); the message says where."""


@dataclass
class CollectionRun:
    """One `collect` in progress: what its stages (load, sample, score, grade, featurize)
    share."""

    config: EvalConfig
    settings: Settings
    engine: Engine
    cache: Cache
    limit: asyncio.Semaphore
    """Engine and RM calls in flight at once (`config.concurrency`), over every stage."""
    stats: dict[str, Any]
    """What the run counted and timed, in the order the stages add it (`report.json`)."""


@dataclass
class Collected:
    items: list[EvalItem]
    generations: list[Generation]
    greedy: list[Generation] | None
    table: Table
    noise_scores: np.ndarray | None
    stats: dict[str, Any]
