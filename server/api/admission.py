"""Back-pressure for generation requests, and size limits on what a request may carry.

At most `max_concurrent` generation requests are worked on at once; up to `max_queue` more
wait (first come, first served) for a slot. Past that the request is refused at once with
429 and `Retry-After`, before any work; one that waits longer than `queue_timeout_s` gets
503. So memory and latency stay bounded however hard clients push, and the server serves
normally again as soon as the load drops.

    admission = Admission(max_concurrent=2, max_queue=4, queue_timeout_s=30, retry_after_s=1)

    async def handle(req):
        async with admission.slot():  # raises TooManyRequestsError (429) when full
            return await run(req)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from laser.server.errors import (
    ServiceUnavailableError,
    TooManyRequestsError,
    error_body,
)

if TYPE_CHECKING:
    from laser.server.config import Settings
    from laser.server.metrics import Metrics


class Admission:
    """A bounded slot pool with a bounded wait line; all state lives on the event loop."""

    def __init__(
        self,
        max_concurrent: int,
        max_queue: int,
        queue_timeout_s: float,
        retry_after_s: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self.queue_timeout_s, self.retry_after_s = queue_timeout_s, retry_after_s
        self.metrics = metrics
        self.active = 0  # holding a slot
        self.waiting = 0  # queued for one
        self.rejected: dict[str, int] = {"queue_full": 0, "queue_timeout": 0}
        self._slots = asyncio.Semaphore(max_concurrent)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> Admission:
        return cls(
            settings.max_concurrent,
            settings.max_queue,
            settings.queue_timeout_s,
            settings.retry_after_s,
            metrics,
        )

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.generate_active.set(self.active)
            self.metrics.queue_depth.set(self.waiting)

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        if self.metrics is not None:
            self.metrics.rejected.labels(reason).inc()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the `max_concurrent` slots for the body of the `async with`."""
        headers = {"Retry-After": str(self.retry_after_s)}
        if self._slots.locked() and self.waiting >= self.max_queue:
            self._reject("queue_full")
            raise TooManyRequestsError(
                f"the server is at capacity ({self.active} requests running, {self.waiting} "
                f"waiting, limits max_concurrent={self.max_concurrent}, "
                f"max_queue={self.max_queue}); retry after {self.retry_after_s} s",
                code="queue_full",
                headers=headers,
            )
        self.waiting += 1
        self._gauges()
        try:
            await asyncio.wait_for(self._slots.acquire(), self.queue_timeout_s)
        except TimeoutError:
            self._reject("queue_timeout")
            raise ServiceUnavailableError(
                f"waited {self.queue_timeout_s:g} s for a free slot; the server is overloaded, "
                f"retry after {self.retry_after_s} s",
                code="queue_timeout",
                headers=headers,
            ) from None
        finally:
            self.waiting -= 1
            self._gauges()
        self.active += 1
        self._gauges()
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()
            self._gauges()

    def status(self) -> dict[str, Any]:
        """What `/health` shows: `{"active", "waiting", "max_concurrent", "max_queue", ...}`."""
        return {
            "active": self.active,
            "waiting": self.waiting,
            "max_concurrent": self.max_concurrent,
            "max_queue": self.max_queue,
            "rejected": dict(self.rejected),
        }


class BodyLimitMiddleware:
    """The one body limit: an announced Content-Length over `max_body_bytes` is refused
    before anything is read; otherwise the body bytes are counted as they arrive, so a body
    without a Content-Length (chunked transfer) cannot grow past the limit either. Either way
    it answers 413 itself and tells the app the client is gone (nothing more is read).

        app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = dict(scope.get("headers") or []).get(b"content-length", b"")
        if announced.isdigit() and int(announced) > self.max_bytes:
            await self._refuse(send, int(announced))
            return
        seen, refused = 0, False

        async def limited() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:  # our 413 went out; the app's reply to the "disconnect" is dropped
                await send(message)

        await self.app(scope, limited, guarded)

    async def _refuse(self, send: Send, length: int | None = None) -> None:
        size = f"of {length} bytes " if length is not None else ""
        body = json.dumps(
            error_body(
                f"request body {size}is over the limit ({self.max_bytes} bytes)",
                "invalid_request_error",
                code="body_too_large",
            )
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
