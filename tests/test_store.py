"""The store's group commit: decisions that arrive together share one transaction, and each
caller is answered with its own outcome, only after its own decision is committed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np

from laser.server.store.base import Decision
from laser.server.store.sqlite import Store


def _decision(i: int | str) -> Decision:
    return Decision(
        id=f"d-{i}",
        created=0.0,
        prompt="q",
        task=None,
        has_document=False,
        arm="loglik",
        propensity=0.5,
        selection="bandit",
        context=np.arange(3, dtype=np.float64),
        scores=[0.1, 0.2],
        chosen=1,
        model="m",
    )


def _ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as con:
        return {r[0] for r in con.execute("SELECT id FROM decisions")}


def test_concurrent_decisions_are_grouped_and_all_durable(tmp_path: Path) -> None:
    store = Store(tmp_path / "laser.db")

    async def go() -> None:
        await store.add_decision(_decision("first"))
        await asyncio.gather(*(store.add_decision(_decision(i)) for i in range(20)))

    asyncio.run(go())
    store.close()
    assert _ids(tmp_path / "laser.db") == {"d-first", *(f"d-{i}" for i in range(20))}
    # The first commit went alone; the 20 that arrived while it was on the disk, or while
    # the next was, were written in fewer commits than decisions.
    assert store.group_sizes[0] == 1 and sum(store.group_sizes) == 21
    assert len(store.group_sizes) < 21


def test_a_duplicate_in_a_group_fails_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "laser.db")

    async def go() -> list[BaseException | None]:
        await store.add_decision(_decision("dup"))
        outcomes = await asyncio.gather(
            *(store.add_decision(_decision(i)) for i in ["a", "dup", "b", "c"]),
            return_exceptions=True,
        )
        return list(outcomes)

    outcomes = asyncio.run(go())
    store.close()
    assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert _ids(tmp_path / "laser.db") == {"d-dup", "d-a", "d-b", "d-c"}


def test_a_locked_store_fails_the_whole_group_and_commits_nothing(tmp_path: Path) -> None:
    path = tmp_path / "laser.db"
    store = Store(path)
    store.run_sync(lambda: store.conn.execute("PRAGMA busy_timeout = 50"))
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")

    async def go() -> list[BaseException | None]:
        return list(
            await asyncio.gather(
                *(store.add_decision(_decision(i)) for i in range(3)), return_exceptions=True
            )
        )

    outcomes = asyncio.run(go())
    assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3  # each caller its own exception
    locker.rollback()
    locker.close()

    async def again() -> None:
        await asyncio.gather(*(store.add_decision(_decision(i)) for i in range(3)))

    asyncio.run(again())
    store.close()
    assert _ids(path) == {"d-0", "d-1", "d-2"}


def test_group_commit_survives_one_caller_being_cancelled(tmp_path: Path) -> None:
    store = Store(tmp_path / "laser.db")

    async def go() -> None:
        await store.add_decision(_decision("first"))
        tasks = [asyncio.ensure_future(store.add_decision(_decision(i))) for i in range(4)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError)
        await store.add_decision(_decision("after"))  # the store still commits

    asyncio.run(go())
    store.close()
    assert {"d-first", "d-0", "d-2", "d-3", "d-after"} <= _ids(tmp_path / "laser.db")
