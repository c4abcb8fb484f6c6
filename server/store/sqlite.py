"""The durable log: every decision, every feedback, bandit snapshots. SQLite in WAL mode.

Nothing is acknowledged before it is committed here (`synchronous=FULL`: each commit is
fsynced). All access goes through one connection on one worker thread, so writes are
serialised without locks and the event loop never blocks on disk.

Decisions are group-committed: while one commit is on the disk, the decisions that arrive
queue up and go together in the next transaction (one fsync for the group). Each caller
still returns only once its own decision is committed, so "acknowledged means durable"
holds; a lone request pays exactly one commit, as before.

What both stores share (`Decision`, the row layout, `LogStore`, the errors) is in
`base.py`; `postgres.py` is the PostgreSQL twin. The tables are described there.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from laser.server.observe import Observed
from laser.server.store.base import (
    DECISION_COLUMNS,
    DECISION_FIELDS,
    Decision,
    DecisionPage,
    DuplicateFeedbackError,
    FeedbackRow,
    UnknownDecisionError,
    decision_from_row,
    decision_values,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    prompt TEXT NOT NULL,
    task TEXT,
    has_document INTEGER NOT NULL,
    arm TEXT NOT NULL,
    propensity REAL NOT NULL,
    selection TEXT NOT NULL,
    context BLOB NOT NULL,
    scores TEXT NOT NULL,
    chosen INTEGER NOT NULL,
    model TEXT NOT NULL,
    drawn_arm TEXT,
    probabilities TEXT,
    observed TEXT,
    candidates TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(id),
    reward REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reward_models (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    feedback_seq INTEGER NOT NULL,
    state BLOB NOT NULL
);
"""
# Columns added after the first release: ALTERed into older files at open.
_ADDED_COLUMNS = (
    ("drawn_arm", "TEXT"),
    ("probabilities", "TEXT"),
    ("observed", "TEXT"),
    ("candidates", "TEXT"),
)
# Listing decisions newest first, all or by RM (`/admin/decisions`), at any depth.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS decisions_created_id ON decisions (created, id)",
    "CREATE INDEX IF NOT EXISTS decisions_arm_created ON decisions (arm, created, id)",
)


class Store:
    """Async façade over one SQLite connection running on a dedicated thread."""

    shared = False  # one server per file: no other replica writes to it

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="laser-store")
        self._conn: sqlite3.Connection | None = None
        self._pool.submit(self._open).result()
        # Group commit state, touched only on the event loop: decisions waiting for the next
        # commit, and whether a commit is on the store thread now.
        self._queued: list[tuple[Decision, asyncio.Future[None]]] = []
        self._committing = False
        self.group_sizes: list[int] = []  # recent commit group sizes (bounded), for the bench

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        have = {r[1] for r in conn.execute("PRAGMA table_info(decisions)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in have:  # a file written by an older version
                conn.execute(f"ALTER TABLE decisions ADD COLUMN {name} {kind}")
        for index in _INDEXES:
            conn.execute(index)
        self._conn = conn

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "store is closed"
        return self._conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def run_sync(self, fn: Any, *args: Any) -> Any:
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        if self._conn is not None:
            self._pool.submit(self.conn.close).result()
            self._conn = None
        self._pool.shutdown(wait=True)

    # -- decisions --------------------------------------------------------------------------
    def _insert_decision(self, d: Decision) -> None:
        marks = ", ".join("?" * len(DECISION_FIELDS))
        self.conn.execute(
            f"INSERT INTO decisions ({DECISION_COLUMNS}) VALUES ({marks})", decision_values(d)
        )

    def _insert_decisions(self, batch: list[Decision]) -> list[Exception | None]:
        """Commit `batch` in one transaction; one outcome per decision (None: committed).

        A failure of the whole write (locked, disk full) is every decision's outcome, and
        nothing is committed. One bad row (a duplicate id) must not fail the others: then
        each is committed on its own.
        """
        if len(batch) == 1:
            try:
                self._insert_decision(batch[0])
            except sqlite3.Error as exc:
                return [exc]
            return [None]
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for d in batch:
                    self._insert_decision(d)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError:
            pass  # fall through: one by one
        except sqlite3.Error as exc:
            return [exc] * len(batch)
        else:
            return [None] * len(batch)
        out: list[Exception | None] = []
        for d in batch:
            try:
                self._insert_decision(d)
                out.append(None)
            except sqlite3.Error as exc:
                out.append(exc)
        return out

    async def add_decision(self, d: Decision) -> None:
        """Commit a decision (group commit, see the module docstring); returns once durable.

        Raises what SQLite raised for it: `sqlite3.IntegrityError` for an id used already,
        `sqlite3.OperationalError` when the store is locked or full (nothing committed).
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((d, fut))
        if not self._committing:
            self._commit_next()
        await fut

    def _commit_next(self) -> None:
        """Start committing everything queued (on the loop); chains itself while work waits."""
        batch, self._queued = self._queued, []
        if not batch:
            self._committing = False
            return
        self._committing = True
        self.group_sizes = [*self.group_sizes[-999:], len(batch)]
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._pool, self._insert_decisions, [d for d, _ in batch])

        def done(job: asyncio.Future[list[Exception | None]]) -> None:
            exc = RuntimeError("store commit cancelled") if job.cancelled() else job.exception()
            outcomes = [exc] * len(batch) if exc is not None else job.result()
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if fut.done():  # the caller was cancelled; its decision may still be written
                    continue
                if outcome is None:
                    fut.set_result(None)
                else:  # a fresh exception per caller: tracebacks must not be shared
                    fut.set_exception(type(outcome)(*outcome.args))
            self._commit_next()

        job.add_done_callback(done)

    def _get_decision(self, decision_id: str) -> Decision | None:
        row = self.conn.execute(
            f"SELECT {DECISION_COLUMNS} FROM decisions WHERE id = ?", (decision_id,)
        ).fetchone()
        return None if row is None else decision_from_row(row)

    async def get_decision(self, decision_id: str) -> Decision | None:
        result: Decision | None = await self._run(self._get_decision, decision_id)
        return result

    async def decisions(self, page: DecisionPage) -> list[tuple[Decision, float | None]]:
        """A page of decisions newest first, each with its feedback (None: none yet)."""
        sql, args = page.sql("?")

        def q() -> list[tuple[Decision, float | None]]:
            rows = self.conn.execute(sql, args).fetchall()
            return [(decision_from_row(r[:-1]), r[-1]) for r in rows]

        result: list[tuple[Decision, float | None]] = await self._run(q)
        return result

    async def decision_feedback(self, decision_id: str) -> float | None:
        def q() -> float | None:
            row = self.conn.execute(
                "SELECT reward FROM feedback WHERE decision_id = ?", (decision_id,)
            ).fetchone()
            return None if row is None else float(row[0])

        result: float | None = await self._run(q)
        return result

    # -- feedback ---------------------------------------------------------------------------
    def _insert_feedback(self, decision_id: str, reward: float) -> tuple[int, Decision]:
        decision = self._get_decision(decision_id)
        if decision is None:
            raise UnknownDecisionError(decision_id)
        try:
            cur = self.conn.execute(
                "INSERT INTO feedback (decision_id, reward, created) VALUES (?,?,?)",
                (decision_id, reward, time.time()),
            )
        except sqlite3.IntegrityError:
            raise DuplicateFeedbackError(decision_id) from None
        return int(cur.lastrowid or 0), decision

    async def add_feedback(self, decision_id: str, reward: float) -> tuple[int, Decision]:
        """Commit a feedback; returns its sequence number and the decision it rates."""
        result: tuple[int, Decision] = await self._run(self._insert_feedback, decision_id, reward)
        return result

    def feedback_after(self, seq: int) -> list[FeedbackRow]:
        """Feedback with sequence number > `seq`, oldest first, joined with its decision."""
        rows = self.run_sync(
            lambda: self.conn.execute(
                "SELECT f.seq, f.decision_id, f.reward, d.arm, d.context, d.selection, d.observed "
                "FROM feedback f "
                "JOIN decisions d ON d.id = f.decision_id WHERE f.seq > ? ORDER BY f.seq",
                (seq,),
            ).fetchall()
        )
        return [
            FeedbackRow(r[0], r[1], r[2], r[3], np.frombuffer(r[4]), r[5], Observed.from_json(r[6]))
            for r in rows
        ]

    async def answered_prompts(
        self, limit: int, with_feedback: bool = True, since: float = 0.0, until: float = 1e18
    ) -> list[tuple[str, str | None]]:
        """The distinct questions answered between `since` and `until` (unix seconds), with a
        task hint if any, newest first; with `with_feedback`, only those that got feedback."""
        join = "JOIN feedback f ON f.decision_id = d.id " if with_feedback else ""

        def q() -> list[tuple[str, str | None]]:
            return [
                (str(p), t)
                for p, t in self.conn.execute(
                    f"SELECT d.prompt, MAX(d.task) FROM decisions d {join}"
                    "WHERE d.created >= ? AND d.created < ? GROUP BY d.prompt "
                    "ORDER BY MAX(d.created) DESC LIMIT ?",
                    (since, until, limit),
                ).fetchall()
            ]

        result: list[tuple[str, str | None]] = await self._run(q)
        return result

    # -- snapshots --------------------------------------------------------------------------
    def _insert_snapshot(self, feedback_seq: int, state: bytes) -> None:
        self.conn.execute(
            "INSERT INTO snapshots (created, feedback_seq, state) VALUES (?,?,?)",
            (time.time(), feedback_seq, state),
        )
        # Keep the last few; older ones only cost disk.
        self.conn.execute(
            "DELETE FROM snapshots WHERE seq NOT IN "
            "(SELECT seq FROM snapshots ORDER BY seq DESC LIMIT 5)"
        )

    async def add_snapshot(self, feedback_seq: int, state: bytes) -> None:
        await self._run(self._insert_snapshot, feedback_seq, state)

    def add_snapshot_sync(self, feedback_seq: int, state: bytes) -> None:
        self.run_sync(self._insert_snapshot, feedback_seq, state)

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        row = self.run_sync(
            lambda: self.conn.execute(
                "SELECT feedback_seq, state FROM snapshots ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    # -- reward models changed through the admin API ----------------------------------------
    def _put_rm(self, name: str, spec: str, enabled: bool) -> None:
        self.conn.execute(
            "INSERT INTO reward_models VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
            "spec = excluded.spec, enabled = excluded.enabled, updated = excluded.updated",
            (name, spec, int(enabled), time.time()),
        )

    async def put_reward_model(self, name: str, spec: str, enabled: bool) -> None:
        """Record an RM added or switched on/off at run time (JSON spec)."""
        await self._run(self._put_rm, name, spec, enabled)

    def _rm_rows(self) -> list[tuple[str, str, bool]]:
        rows = self.conn.execute(
            "SELECT name, spec, enabled FROM reward_models ORDER BY updated"
        ).fetchall()
        return [(r[0], r[1], bool(r[2])) for r in rows]

    def reward_model_rows(self) -> list[tuple[str, str, bool]]:
        """(name, spec JSON, enabled) of RMs changed at run time; blocking (start-up only)."""
        result: list[tuple[str, str, bool]] = self.run_sync(self._rm_rows)
        return result

    async def reward_models(self) -> list[tuple[str, str, bool]]:
        """`reward_model_rows`, off the event loop."""
        result: list[tuple[str, str, bool]] = await self._run(self._rm_rows)
        return result

    def _counts(self) -> dict[str, int]:
        c = self.conn
        return {
            "decisions": c.execute("SELECT COUNT(*) FROM decisions").fetchone()[0],
            "feedback": c.execute("SELECT COUNT(*) FROM feedback").fetchone()[0],
        }

    async def counts(self) -> dict[str, int]:
        """How many decisions and feedbacks are logged (off the event loop)."""
        result: dict[str, int] = await self._run(self._counts)
        return result
