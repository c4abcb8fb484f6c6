"""Cross-request batching for in-process models: concurrent requests' inputs run as one
forward pass.

A `Coalescer` wraps a blocking batch function `fn(items) -> results` (a transformers forward
pass, say). At most one call runs at a time, in a worker thread, so two requests never
oversubscribe the CPU with two forward passes; inputs submitted while a call runs wait and
go together into the next one. Alone, a request costs what a direct call costs; under load,
the batches grow and the per-item cost falls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """`await submit(items)` -> `fn`'s results for exactly those items, in order.

    >>> import asyncio
    >>> calls = []
    >>> c = Coalescer(lambda xs: calls.append(len(xs)) or [x * 2 for x in xs])
    >>> async def three():
    ...     return await asyncio.gather(c.submit([1]), c.submit([2, 3]), c.submit([4]))
    >>> asyncio.run(three())
    [[2], [4, 6], [8]]
    >>> calls  # all three were waiting when the worker first ran: one call
    [4]
    """

    def __init__(self, fn: Callable[[list[T]], list[R]], max_items: int = 64) -> None:
        self.fn = fn
        self.max_items = max_items
        self._pending: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self.calls = 0  # forward calls made, and the items they held (for the bench)
        self.items = 0

    async def submit(self, items: list[T]) -> list[R]:
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop (tests): fresh state
            self._loop, self._pending, self._worker = loop, [], None
        future: asyncio.Future[list[R]] = loop.create_future()
        self._pending.append((list(items), future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            # Whole requests, up to max_items (a larger request goes alone).
            take, size = 0, 0
            while take < len(self._pending) and (
                take == 0 or size + len(self._pending[take][0]) <= self.max_items
            ):
                size += len(self._pending[take][0])
                take += 1
            batch, self._pending = self._pending[:take], self._pending[take:]
            live = [(items, fut) for items, fut in batch if not fut.done()]  # not cancelled
            if not live:
                continue
            flat = [x for items, _ in live for x in items]
            try:
                results = await asyncio.to_thread(self.fn, flat)
                if len(results) != len(flat):
                    raise RuntimeError(f"batch function returned {len(results)} for {len(flat)}")
            except Exception as exc:  # every request of this batch gets the error
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.calls += 1
            self.items += len(flat)
            start = 0
            for items, fut in live:
                if not fut.done():
                    fut.set_result(results[start : start + len(items)])
                start += len(items)
