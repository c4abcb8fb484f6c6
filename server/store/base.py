"""What both stores share: the decision and feedback rows, the decisions table's column
layout, the `LogStore` protocol the reranker talks to, and the errors.

The tables (SQLite in `sqlite.py`, PostgreSQL in `postgres.py`, the same columns):
- `decisions`: id, created, prompt, task, has_document, arm (the RM that scored), propensity,
  selection (`bandit`: drawn from the bandit's policy; `forced`: the request named the RM;
  `fallback`: the drawn RM failed and the next one scored; `none`: the RM could not matter,
  one candidate, all candidates the same text or every RM scoring them alike, so feedback
  on it teaches no RM; `abstain`: the drawn RM scored every candidate alike and the next RM
  by the bandit's order chose), context
  (float64 bytes), scores (JSON list), chosen index, model, drawn_arm (the bandit's draw;
  null when forced), probabilities (JSON: the bandit's policy over the eligible RMs for this
  context). `propensity` is always that policy's probability of `arm`, also for forced and fallback
  rows, which estimators exclude by `selection`. observed (JSON, `observe.py`): every RM's
  scores for the decision, which RMs' picks agree with the returned answer and which
  abstained, so a feedback also updates them, on replay and on every replica alike.
- `feedback`: seq (monotonic), decision id (unique: first feedback stands), reward, created
- `snapshots`: seq, created, last feedback seq folded in, bandit state (laser.bandit bytes)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from laser.server.observe import Observed


class UnknownDecisionError(KeyError):
    """Feedback for an id the store never saw."""


class DuplicateFeedbackError(ValueError):
    """A second feedback for the same decision (the first one stands)."""


@dataclass(frozen=True)
class Decision:
    id: str
    created: float
    prompt: str
    task: str | None
    has_document: bool
    arm: str
    propensity: float
    selection: str
    context: np.ndarray
    scores: list[float | None]
    chosen: int
    model: str
    drawn_arm: str | None = None
    probabilities: dict[str, float] | None = None
    observed: Observed | None = None
    candidates: list[str] | None = None
    """The candidates' texts, in order (`scores` and `chosen` index them)."""


DECISION_COLUMNS = (
    "id, created, prompt, task, has_document, arm, propensity, selection, context, scores, "
    "chosen, model, drawn_arm, probabilities, observed, candidates"
)
# Columns added after the first release: (name, type), added to older files on open.


DECISION_FIELDS = tuple(c.strip() for c in DECISION_COLUMNS.split(","))


def decision_values(d: Decision) -> tuple[Any, ...]:
    """A decision as the values of `DECISION_COLUMNS`, in order (both stores write these)."""
    return (
        d.id,
        d.created,
        d.prompt,
        d.task,
        bool(d.has_document),
        d.arm,
        d.propensity,
        d.selection,
        np.asarray(d.context, dtype=np.float64).tobytes(),
        json.dumps(d.scores),
        d.chosen,
        d.model,
        d.drawn_arm,
        None if d.probabilities is None else json.dumps(d.probabilities),
        None if d.observed is None else d.observed.to_json(),
        None if d.candidates is None else json.dumps(d.candidates),
    )


def decision_from_row(row: Any) -> Decision:
    """A `decisions` row (all `DECISION_COLUMNS`, in order) as a `Decision`."""
    return Decision(
        id=row[0],
        created=row[1],
        prompt=row[2],
        task=row[3],
        has_document=bool(row[4]),
        arm=row[5],
        propensity=row[6],
        selection=row[7],
        context=np.frombuffer(row[8], dtype=np.float64),
        scores=json.loads(row[9]),
        chosen=row[10],
        model=row[11],
        drawn_arm=row[12],
        probabilities=None if row[13] is None else json.loads(row[13]),
        observed=Observed.from_json(row[14]) if len(row) > 14 else None,
        candidates=json.loads(row[15]) if len(row) > 15 and row[15] is not None else None,
    )


@dataclass(frozen=True)
class DecisionPage:
    """Filters and a keyset cursor for listing decisions newest first (`/admin/decisions`)."""

    limit: int = 50
    before: tuple[float, str] | None = None
    """Only decisions older than this (created, id): the last row of the previous page."""
    arm: str | None = None
    selection: str | None = None
    feedback: bool | None = None
    """True: only decisions with feedback; False: only those without."""
    task: str | None = None

    def sql(self, mark: str) -> tuple[str, list[Any]]:
        """The query (placeholders `mark`: `?` or `%s`) and its arguments. An index on
        (created, id) serves the order and the cursor, so a page costs the same at any depth."""
        where, args = [], []
        if self.before is not None:
            where.append(f"(d.created < {mark} OR (d.created = {mark} AND d.id < {mark}))")
            args += [self.before[0], self.before[0], self.before[1]]
        for column, value in (("d.arm", self.arm), ("d.selection", self.selection)):
            if value is not None:
                where.append(f"{column} = {mark}")
                args.append(value)
        if self.task is not None:
            where.append(f"d.task = {mark}")
            args.append(self.task)
        if self.feedback is not None:
            where.append("f.reward IS NOT NULL" if self.feedback else "f.reward IS NULL")
        cols = ", ".join(f"d.{c.strip()}" for c in DECISION_COLUMNS.split(","))
        sql = (
            f"SELECT {cols}, f.reward FROM decisions d "
            "LEFT JOIN feedback f ON f.decision_id = d.id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY d.created DESC, d.id DESC LIMIT {mark}"
        )
        return sql, [*args, self.limit]


NO_SELECTION = "none"
"""`Decision.selection` when no RM could matter (one candidate, or all of the same text)."""


@dataclass(frozen=True)
class FeedbackRow:
    seq: int
    decision_id: str
    reward: float
    arm: str
    context: np.ndarray
    selection: str = "bandit"
    observed: Observed | None = None

    @property
    def teaches(self) -> bool:
        """Whether the bandit learns from it: not when its RM could not matter (`none`)."""
        return self.selection != NO_SELECTION


class LogStore(Protocol):
    """What the reranker needs of a log: SQLite (`Store`) or PostgreSQL (`PgStore`)."""

    shared: bool
    """True when other replicas write to the same log (then it is also a `SharedLogStore`)."""

    async def add_decision(self, d: Decision) -> None: ...
    async def get_decision(self, decision_id: str) -> Decision | None: ...
    async def decisions(self, page: DecisionPage) -> list[tuple[Decision, float | None]]: ...
    async def decision_feedback(self, decision_id: str) -> float | None: ...
    async def add_feedback(self, decision_id: str, reward: float) -> tuple[int, Decision]: ...
    def feedback_after(self, seq: int) -> list[FeedbackRow]: ...
    async def answered_prompts(
        self, limit: int, with_feedback: bool = True, since: float = 0.0, until: float = 1e18
    ) -> list[tuple[str, str | None]]: ...
    async def add_snapshot(self, feedback_seq: int, state: bytes) -> None: ...
    def add_snapshot_sync(self, feedback_seq: int, state: bytes) -> None: ...
    def latest_snapshot(self) -> tuple[int, bytes] | None: ...
    async def put_reward_model(self, name: str, spec: str, enabled: bool) -> None: ...
    def reward_model_rows(self) -> list[tuple[str, str, bool]]: ...
    async def reward_models(self) -> list[tuple[str, str, bool]]: ...
    async def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class SharedLogStore(LogStore, Protocol):
    """A log several replicas write to: each follows the others' feedback and RM changes."""

    async def feedback_since(self, seq: int) -> list[FeedbackRow]: ...
    async def reward_model_changes(self, after: int) -> list[tuple[str, str, bool, int]]: ...
