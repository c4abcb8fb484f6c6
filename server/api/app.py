"""The FastAPI app factory. Services live on `app.state`, set up in `lifespan`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from laser.server import logs
from laser.server.api.admission import Admission, BodyLimitMiddleware
from laser.server.api.auth import require_admin, require_user
from laser.server.api.decision_routes import router as decision_router
from laser.server.api.openai_routes import router as openai_router
from laser.server.api.routes import admin_router, native_router
from laser.server.api.training_routes import restore_policy
from laser.server.api.training_routes import router as training_router
from laser.server.api.ui_routes import router as ui_router
from laser.server.config import RewardModelSpec, Settings, redact
from laser.server.errors import (
    APIError,
    ServiceUnavailableError,
    error_body,
)
from laser.server.metrics import Metrics
from laser.server.protocol import (
    ErrorResponse,
)
from laser.server.reranker import Reranker
from laser.server.services import (
    Services,
    build_ensemble,
    build_reward_model,
    load_services,
    open_store,
)
from laser.server.training.jobs import JobManager

log = logging.getLogger("laser.server")


class RequestMetricsMiddleware:
    """Counts requests (in flight; by route and status) and tells the client how long the
    app took: a `Server-Timing: app;dur=<ms>` header, from the request's arrival here to its
    response headers, so a client can tell the server's time from the network's. Plain ASGI:
    Starlette's `@app.middleware("http")` wraps every request in extra tasks and streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
        start = time.perf_counter()
        status = 500
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"")
        logs.REQUEST.set(
            {
                "request_id": given.decode("latin-1")[:128] or None,
                "method": scope.get("method"),
                "route": scope.get("path"),
            }
        )

        async def timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                ms = (time.perf_counter() - start) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={ms:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        if metrics is not None:
            metrics.in_flight.inc()
        try:
            await self.app(scope, receive, timed)
        finally:
            if metrics is not None:
                metrics.in_flight.dec()
        path = getattr(scope.get("route"), "path", "unmatched")
        if metrics is not None:
            metrics.requests.labels(path, str(status)).inc()
        logs.note(route=path)
        logs.access(status, (time.perf_counter() - start) * 1000)


class InsecureSettingsError(RuntimeError):
    """Settings that would expose the server without an API key (see `exposure_problem`)."""


def http_server(
    app: FastAPI, settings: Settings, *, port: int | None = None, log_level: str = "warning"
) -> Any:
    """A `uvicorn.Server` for `app` on `settings.host` (and `port`, default the settings')."""
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port if port is None else port,
            log_level=log_level,
            # Our access line (`logs.access`: request id, RM, latency) replaces uvicorn's,
            # and every line goes through the root handler `logs.setup` installs.
            access_log=False,
            log_config=None,
            lifespan="on",
            timeout_keep_alive=settings.keep_alive_s,
            # On SIGTERM: stop accepting, let in-flight requests finish (up to 30 s), then
            # run the lifespan shutdown (final bandit snapshot, engine stop).
            timeout_graceful_shutdown=30,
        )
    )


def _error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


def build_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The app: its state set up in the lifespan (`_lifespan`), one error shape for every
    failure (`_add_error_handlers`), the body limit and metrics middleware, the routers.
    Without `services`, the lifespan loads them (and shuts them down at exit)."""
    app = FastAPI(
        title="laser-server",
        version="0.1.0",
        lifespan=_lifespan(settings, services),
        # Every error any route can give, in the one shape (documented for clients and fuzzers).
        responses={
            code: {"model": ErrorResponse}
            for code in (400, 401, 403, 404, 405, 409, 413, 422, 429, 500, 503)
        },
    )

    _add_error_handlers(app, settings)
    app.add_middleware(RequestMetricsMiddleware)
    # Outermost: refuses an announced Content-Length over the limit, and counts body bytes as
    # they arrive (chunked bodies have no Content-Length).
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    app.include_router(openai_router, dependencies=[Depends(require_user)])
    app.include_router(training_router, dependencies=[Depends(require_admin)])
    app.include_router(admin_router, dependencies=[Depends(require_admin)])
    app.include_router(decision_router, dependencies=[Depends(require_admin)])
    app.include_router(ui_router)
    app.include_router(native_router)
    return app


def _reward_models(
    settings: Settings, svc: Services
) -> tuple[Callable[..., Any], dict[str, Any], dict[str, str]]:
    """The RM factory under the server's own outbound rule, the RMs it builds from the
    settings, and those that could not be built (name -> why): a bad entry disables that
    RM, the server still starts."""

    def build_rm(spec: RewardModelSpec, models: Mapping[str, Any] | None = None) -> Any:
        # An ensemble is built over the RMs built so far (`models`).
        if spec.kind == "ensemble":
            return build_ensemble(spec, models or {})
        # Under the server's own outbound rule, whatever the services were loaded with.
        return build_reward_model(
            spec, engine=svc.engine, encoder=svc.encoder, allowed_hosts=settings.outbound_hosts
        )

    rms: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    ordered = sorted(settings.reward_models, key=lambda s: s.kind == "ensemble")
    for spec in ordered:
        try:
            rms[spec.name] = build_rm(spec, rms)
        except Exception as exc:
            unavailable[spec.name] = f"{type(exc).__name__}: {exc}"[:300]
            log.error("reward model %s disabled: %s", spec.name, unavailable[spec.name])
    return build_rm, rms, unavailable


def _lifespan(
    settings: Settings, services: Services | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up (services, store, RMs, reranker, admission, jobs, the served policy, the
    replica follower) and the graceful stop (final snapshot, everything closed)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        problem = settings.exposure_problem()
        if problem is not None:
            raise InsecureSettingsError(problem)
        own = services is None
        svc = load_services(settings) if services is None else services
        store = open_store(settings)
        featurizer = svc.featurizer(settings)
        metrics = Metrics()

        build_rm, rms, unavailable = _reward_models(settings, svc)
        reranker = Reranker(
            settings, svc.engine, featurizer, rms, store, metrics, build_rm, unavailable
        )
        await reranker.warmup()
        app.state.settings = settings
        app.state.reranker = reranker
        app.state.metrics = metrics
        app.state.admission = Admission.from_settings(settings, metrics)
        jobs = JobManager(settings.data_dir, settings.model_cache)
        app.state.jobs = jobs
        await jobs.call(jobs.recover)  # jobs of an earlier server process: resumed or failed
        await asyncio.to_thread(restore_policy, app.state)
        log.info(
            "ready: model %s, reward models %s, bandit d=%d alpha=%s, store %s",
            svc.engine.model_name,
            ", ".join(rms),
            featurizer.dim,
            settings.bandit.alpha,
            settings.store_path,
        )
        follower = None
        if store.shared:  # other replicas write to the same log: follow them
            follower = asyncio.create_task(reranker.follow(settings.store.poll_interval_s))
        try:
            yield
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            try:
                reranker.snapshot_sync()  # graceful stop: the bandit is saved
            except Exception as exc:
                log.warning("final snapshot failed: %s", exc)
            store.close()
            jobs.close()
            reranker.close()
            await reranker.rms.aclose()  # the remote RMs' HTTP clients
            if own:
                await svc.aclose()

    return lifespan


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    """Every error a route can raise, in the one JSON error shape; never a stack trace."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(
                400,
                error_body(
                    "request body is not valid JSON", "invalid_request_error", None, "invalid_json"
                ),
            )
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        message = f"{param}: {msg}" if param else str(msg)
        return _error(422, error_body(message, "invalid_request_error", param, "validation_error"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}
        code = "body_too_large" if exc.status_code == 413 else None
        return _error(
            exc.status_code,
            error_body(str(exc.detail), kind.get(exc.status_code, "error"), code=code),
            getattr(exc, "headers", None),
        )

    @app.exception_handler(sqlite3.OperationalError)
    async def _store_down(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        # Store calls the pipeline does not wrap itself (reads): still a clean 503.
        why = redact(str(exc))
        log.warning("store error on %s: %s", request.url.path, why)
        err = ServiceUnavailableError(
            f"the store is unavailable ({why}); retry later",
            code="store_unavailable",
            headers={"Retry-After": str(settings.retry_after_s)},
        )
        return _error(err.status, err.body(), err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, error_body(f"internal error: {type(exc).__name__}", "internal_error"))
