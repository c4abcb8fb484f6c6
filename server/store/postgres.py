"""The shared log for several replicas: the store's interface on PostgreSQL (psycopg 3 and its
connection pool), chosen by `store.url = "postgresql://..."`.

Same promises as the SQLite store: a decision is acknowledged only once committed, a feedback
only once committed, and a second feedback for a decision is refused on every replica (a
unique constraint). What sharing adds:

- Feedback gets its sequence number under a table lock, so sequence order is commit order:
  a replica that has seen feedback N has seen every feedback before it. Every replica applies
  every feedback in that order (`Reranker.follow`), so after the same feedback all bandits are
  bit-for-bit the same.
- Reward-model changes carry a revision number (`rev`), so replicas can pick up the admin
  changes made elsewhere (`reward_model_changes`).
- Snapshots are shared: a replica that starts late loads the newest one and replays the rest.

The schema is versioned (`laser_schema`); `migrate` applies what is missing, and
`laser-server db upgrade` runs it for operators who prefer to migrate by hand. All calls run
on worker threads: the event loop never waits on the network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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

# (version, statements): applied in order, each in one transaction, never edited once shipped.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE decisions (
            id TEXT PRIMARY KEY,
            created DOUBLE PRECISION NOT NULL,
            prompt TEXT NOT NULL,
            task TEXT,
            has_document BOOLEAN NOT NULL,
            arm TEXT NOT NULL,
            propensity DOUBLE PRECISION NOT NULL,
            selection TEXT NOT NULL,
            context BYTEA NOT NULL,
            scores TEXT NOT NULL,
            chosen INTEGER NOT NULL,
            model TEXT NOT NULL,
            drawn_arm TEXT,
            probabilities TEXT
        );
        CREATE TABLE feedback (
            seq BIGSERIAL PRIMARY KEY,
            decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(id),
            reward DOUBLE PRECISION NOT NULL,
            created DOUBLE PRECISION NOT NULL
        );
        CREATE SEQUENCE reward_model_rev;
        CREATE TABLE reward_models (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            enabled BOOLEAN NOT NULL,
            updated DOUBLE PRECISION NOT NULL,
            rev BIGINT NOT NULL
        );
        CREATE TABLE snapshots (
            seq BIGSERIAL PRIMARY KEY,
            created DOUBLE PRECISION NOT NULL,
            feedback_seq BIGINT NOT NULL,
            state BYTEA NOT NULL
        );
        CREATE INDEX decisions_created ON decisions (created);
        """,
    ),
    (
        2,
        """
        ALTER TABLE decisions ADD COLUMN observed TEXT;
        ALTER TABLE decisions ADD COLUMN candidates TEXT;
        CREATE INDEX decisions_created_id ON decisions (created, id);
        CREATE INDEX decisions_arm_created ON decisions (arm, created, id);
        """,
    ),
]
LATEST = MIGRATIONS[-1][0]
_LOCK_ID = 0x1A5E2  # advisory lock: one migrating process at a time


class SchemaError(RuntimeError):
    """The database's schema is newer than this version of laser-server knows."""


def schema_version(conn: Any) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS laser_schema (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM laser_schema").fetchone()
    return int(row[0] or 0)


def migrate(url: str) -> tuple[int, int]:
    """Apply the missing migrations; returns (version before, version after)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            before = schema_version(conn)
            if before > LATEST:
                raise SchemaError(
                    f"the database is at schema {before}, newer than this laser-server "
                    f"({LATEST}); upgrade laser-server"
                )
            for version, sql in MIGRATIONS:
                if version <= before:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO laser_schema VALUES (%s)", (version,))
            return before, max(before, LATEST)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))


def decision_from_pg_row(row: Any) -> Decision:
    """A `decisions` row (`DECISION_COLUMNS`) read from PostgreSQL as a `Decision`."""
    return decision_from_row((*row[:8], bytes(row[8]), *row[9:]))


class PgStore:
    """The `Store` interface on PostgreSQL; `shared = True` tells the reranker to follow
    other replicas' feedback and admin changes."""

    shared = True

    def __init__(self, url: str, pool_size: int = 8, upgrade: bool = True) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        self._psycopg = psycopg
        if upgrade:
            migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            version = schema_version(conn)
        if version != LATEST:
            raise SchemaError(
                f"the database is at schema {version}, this laser-server needs {LATEST}: run "
                "`laser-server db upgrade`"
            )
        # `check`: a connection broken by a database restart is replaced, not handed out.
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            timeout=5,  # waiting for a connection; then 503 store_unavailable
            open=True,
        )
        self._exec = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="laser-pg")
        self.group_sizes: list[int] = []

    # -- plumbing ---------------------------------------------------------------------------
    def _with(self, fn: Callable[[Any], T]) -> T:
        with self._pool.connection() as conn:
            return fn(conn)

    async def _run(self, fn: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._exec, self._with, fn)

    def close(self) -> None:
        self._exec.shutdown(wait=True)
        self._pool.close()

    # -- decisions --------------------------------------------------------------------------
    async def add_decision(self, d: Decision) -> None:
        """Commit a decision; returns once durable. A used id raises `sqlite3.IntegrityError`
        (the serving code's one signal for it), a database fault `sqlite3.OperationalError`."""

        def insert(conn: Any) -> None:
            marks = ", ".join(["%s"] * len(DECISION_FIELDS))
            sql = f"INSERT INTO decisions ({DECISION_COLUMNS}) VALUES ({marks})"
            conn.execute(sql, decision_values(d))

        await self._translated(insert)

    async def _translated(self, fn: Callable[[Any], T]) -> T:
        """Run `fn`, raising PostgreSQL errors as the sqlite3 ones the serving code handles
        (a duplicate key is an IntegrityError, an unreachable database an OperationalError)."""
        import sqlite3

        errors = self._psycopg.errors
        try:
            return await self._run(fn)
        except errors.UniqueViolation as exc:
            raise sqlite3.IntegrityError(str(exc)) from exc
        except self._psycopg.OperationalError as exc:
            raise sqlite3.OperationalError(str(exc)) from exc

    async def get_decision(self, decision_id: str) -> Decision | None:
        def q(conn: Any) -> Decision | None:
            row = conn.execute(
                f"SELECT {DECISION_COLUMNS} FROM decisions WHERE id = %s", (decision_id,)
            ).fetchone()
            return None if row is None else decision_from_pg_row(row)

        return await self._translated(q)

    async def decisions(self, page: DecisionPage) -> list[tuple[Decision, float | None]]:
        """A page of decisions newest first, each with its feedback (None: none yet)."""
        sql, args = page.sql("%s")

        def q(conn: Any) -> list[tuple[Decision, float | None]]:
            rows = conn.execute(sql, args).fetchall()
            return [(decision_from_pg_row(r[:-1]), r[-1]) for r in rows]

        return await self._translated(q)

    async def decision_feedback(self, decision_id: str) -> float | None:
        def q(conn: Any) -> float | None:
            row = conn.execute(
                "SELECT reward FROM feedback WHERE decision_id = %s", (decision_id,)
            ).fetchone()
            return None if row is None else float(row[0])

        return await self._translated(q)

    # -- feedback ---------------------------------------------------------------------------
    async def add_feedback(self, decision_id: str, reward: float) -> tuple[int, Decision]:
        """Commit a feedback; its sequence number (commit order) and the decision it rates."""

        def insert(conn: Any) -> tuple[int, Decision]:
            with conn.transaction():
                # Serialises feedback writers: sequence numbers are handed out in commit order.
                conn.execute("LOCK TABLE feedback IN SHARE ROW EXCLUSIVE MODE")
                row = conn.execute(
                    f"SELECT {DECISION_COLUMNS} FROM decisions WHERE id = %s", (decision_id,)
                ).fetchone()
                if row is None:
                    raise UnknownDecisionError(decision_id)
                seen = conn.execute(
                    "SELECT 1 FROM feedback WHERE decision_id = %s", (decision_id,)
                ).fetchone()
                if seen is not None:
                    raise DuplicateFeedbackError(decision_id)
                seq = conn.execute(
                    "INSERT INTO feedback (decision_id, reward, created) VALUES (%s, %s, %s) "
                    "RETURNING seq",
                    (decision_id, reward, time.time()),
                ).fetchone()[0]
            return int(seq), decision_from_pg_row(row)

        return await self._translated(insert)

    def _feedback_after(self, conn: Any, seq: int) -> list[FeedbackRow]:
        rows = conn.execute(
            "SELECT f.seq, f.decision_id, f.reward, d.arm, d.context, d.selection, d.observed "
            "FROM feedback f "
            "JOIN decisions d ON d.id = f.decision_id WHERE f.seq > %s ORDER BY f.seq",
            (seq,),
        ).fetchall()
        return [
            FeedbackRow(
                r[0], r[1], r[2], r[3], np.frombuffer(bytes(r[4])), r[5], Observed.from_json(r[6])
            )
            for r in rows
        ]

    def feedback_after(self, seq: int) -> list[FeedbackRow]:
        """Feedback with sequence number > `seq`, in commit order (blocking; start-up)."""
        return self._with(lambda conn: self._feedback_after(conn, seq))

    async def feedback_since(self, seq: int) -> list[FeedbackRow]:
        """`feedback_after`, off the event loop (replicas following each other)."""
        return await self._translated(lambda conn: self._feedback_after(conn, seq))

    async def answered_prompts(
        self, limit: int, with_feedback: bool = True, since: float = 0.0, until: float = 1e18
    ) -> list[tuple[str, str | None]]:
        join = "JOIN feedback f ON f.decision_id = d.id " if with_feedback else ""

        def q(conn: Any) -> list[tuple[str, str | None]]:
            rows = conn.execute(
                f"SELECT d.prompt, max(d.task) FROM decisions d {join}"
                "WHERE d.created >= %s AND d.created < %s GROUP BY d.prompt "
                "ORDER BY max(d.created) DESC LIMIT %s",
                (since, until, limit),
            ).fetchall()
            return [(str(p), t) for p, t in rows]

        return await self._translated(q)

    # -- snapshots --------------------------------------------------------------------------
    def _insert_snapshot(self, conn: Any, feedback_seq: int, state: bytes) -> None:
        with conn.transaction():
            conn.execute(
                "INSERT INTO snapshots (created, feedback_seq, state) VALUES (%s, %s, %s)",
                (time.time(), feedback_seq, state),
            )
            conn.execute(
                "DELETE FROM snapshots WHERE seq NOT IN "
                "(SELECT seq FROM snapshots ORDER BY seq DESC LIMIT 5)"
            )

    async def add_snapshot(self, feedback_seq: int, state: bytes) -> None:
        await self._translated(lambda conn: self._insert_snapshot(conn, feedback_seq, state))

    def add_snapshot_sync(self, feedback_seq: int, state: bytes) -> None:
        self._with(lambda conn: self._insert_snapshot(conn, feedback_seq, state))

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        # The snapshot that folded in the most feedback (replicas write them independently).
        row = self._with(
            lambda conn: conn.execute(
                "SELECT feedback_seq, state FROM snapshots ORDER BY feedback_seq DESC, seq DESC "
                "LIMIT 1"
            ).fetchone()
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    # -- reward models changed through the admin API ----------------------------------------
    async def put_reward_model(self, name: str, spec: str, enabled: bool) -> None:
        def q(conn: Any) -> None:
            conn.execute(
                "INSERT INTO reward_models VALUES (%s, %s, %s, %s, nextval('reward_model_rev')) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, "
                "enabled = excluded.enabled, updated = excluded.updated, rev = excluded.rev",
                (name, spec, enabled, time.time()),
            )

        await self._translated(q)

    def _rm_rows(self, conn: Any, after: int = 0) -> list[tuple[str, str, bool, int]]:
        rows = conn.execute(
            "SELECT name, spec, enabled, rev FROM reward_models WHERE rev > %s ORDER BY rev",
            (after,),
        ).fetchall()
        return [(r[0], r[1], bool(r[2]), int(r[3])) for r in rows]

    def reward_model_rows(self) -> list[tuple[str, str, bool]]:
        return [(n, s, e) for n, s, e, _ in self._with(self._rm_rows)]

    async def reward_models(self) -> list[tuple[str, str, bool]]:
        return [(n, s, e) for n, s, e, _ in await self._translated(self._rm_rows)]

    async def reward_model_changes(self, after: int) -> list[tuple[str, str, bool, int]]:
        """RM rows changed (by any replica) with revision > `after`, oldest first."""
        return await self._translated(lambda conn: self._rm_rows(conn, after))

    async def counts(self) -> dict[str, int]:
        def q(conn: Any) -> dict[str, int]:
            return {
                "decisions": conn.execute("SELECT count(*) FROM decisions").fetchone()[0],
                "feedback": conn.execute("SELECT count(*) FROM feedback").fetchone()[0],
            }

        return await self._translated(q)
