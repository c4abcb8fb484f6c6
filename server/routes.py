"""The native routes (`/generate`, `/feedback`, `/health`, `/bandit`, `/metrics`) and the
admin routes. Thin: each reads the reranker from `app.state` and calls one method of it.
The OpenAI-compatible routes are in `openai_api.py`, training jobs in `training/api.py`."""

from __future__ import annotations

import asyncio
import sqlite3

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from laser.server.auth import require_admin, require_user
from laser.server.config import RewardModelSpec, Settings
from laser.server.errors import BadRequestError, ConflictError, ForbiddenError
from laser.server.openai_api import run_generate
from laser.server.outbound import HostNotAllowedError, check_url
from laser.server.paths import PathOptionError, confine_options
from laser.server.pipeline import Reranker
from laser.server.protocol import (
    AdmissionStatus,
    ArmStatus,
    BanditSummary,
    EngineInfo,
    FeedbackRequest,
    FeedbackResponse,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    OPEReport,
    PredictRequest,
    PredictResponse,
    SnapshotResponse,
    StoreCounts,
)
from laser.server.services import outbound_urls

native_router = APIRouter()
admin_router = APIRouter(prefix="/admin")
user = [Depends(require_user)]
keyed = [Depends(require_admin)]  # feedback and the bandit steer or reveal what it learnt


def _reranker(request: Request) -> Reranker:
    reranker: Reranker = request.app.state.reranker
    return reranker


@native_router.post(
    "/generate",
    response_model=GenerateResponse,
    response_model_exclude_none=True,
    dependencies=user,
)
async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
    return await run_generate(request, body, "gen")


@native_router.post("/feedback", dependencies=keyed)
async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
    return await _reranker(request).feedback(body.id, float(body.reward))


@native_router.get("/health")
async def health(request: Request) -> HealthResponse:
    reranker = _reranker(request)
    faults = reranker.faults()
    counts: StoreCounts | None
    try:  # bounded: a probe must answer even while a remote store hangs
        counts = StoreCounts(**await asyncio.wait_for(reranker.store.counts(), 2.0))
    except sqlite3.Error as exc:
        counts, faults = None, [*faults, f"store: {exc}"]
    except asyncio.TimeoutError:  # (not the builtin TimeoutError before Python 3.11)
        counts, faults = None, [*faults, "store: no answer within 2 s"]
    return HealthResponse(
        status="degraded" if faults else "ok",
        faults=faults,
        model=reranker.engine.model_name,
        engine=EngineInfo(
            dtype=getattr(reranker.engine, "dtype", None),
            dtype_reason=getattr(reranker.engine, "dtype_reason", None),
            cpu_threads_bind=getattr(reranker.engine, "cpu_threads_bind", None),
        ),
        reward_models=reranker.summary().arms,
        counts=counts,
        admission=AdmissionStatus(**request.app.state.admission.status()),
    )


@native_router.get("/bandit", dependencies=keyed)
async def bandit(request: Request) -> BanditSummary:
    return _reranker(request).summary()


@native_router.post("/bandit/predict", dependencies=keyed)
async def bandit_predict(body: PredictRequest, request: Request) -> PredictResponse:
    """What the bandit expects of each RM for this query, without choosing or logging. The
    featurizer's work is admitted like a generation's (it may run the sentence encoder)."""
    async with request.app.state.admission.slot():
        return await _reranker(request).predict(body.prompt, body.document is not None, body.task)


@native_router.get("/metrics", response_class=PlainTextResponse)  # documented as text/plain
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


def check_outbound(spec: RewardModelSpec, hosts: list[str], param: str = "options.url") -> None:
    """A 403 when `spec` would send requests to a host outside `outbound_hosts`."""
    for url in outbound_urls(spec):
        try:
            check_url(url, hosts)
        except HostNotAllowedError as exc:
            raise ForbiddenError(str(exc), param=param, code="host_not_allowed") from None
        except ValueError as exc:
            raise BadRequestError(str(exc), param=param) from None


# -- admin (API key) --------------------------------------------------------------------------
@admin_router.get("/reward-models")
async def admin_rms(request: Request) -> dict[str, ArmStatus]:
    return _reranker(request).summary().arms


@admin_router.post("/reward-models", status_code=201)
async def admin_add_rm(spec: RewardModelSpec, request: Request) -> ArmStatus:
    settings: Settings = request.app.state.settings
    try:  # folders named over the API must lie under model_roots or the data dir
        options = confine_options(spec.kind, spec.options, settings.api_path_roots)
    except PathOptionError as exc:
        error = BadRequestError if exc.allowed else ForbiddenError
        raise error(str(exc), param=f"options.{exc.option}", code="path_not_allowed") from None
    spec = spec.model_copy(update={"options": options})
    check_outbound(spec, settings.outbound_hosts)
    reranker = _reranker(request)
    await reranker.add_reward_model(spec)
    return reranker.arm_status(spec.name)


@admin_router.post("/reward-models/{name}/{action}")
async def admin_toggle_rm(name: str, action: str, request: Request) -> ArmStatus:
    if action not in ("enable", "disable"):
        raise BadRequestError("action must be enable or disable", param="action")
    reranker = _reranker(request)
    await reranker.set_enabled(name, action == "enable")
    return reranker.arm_status(name)


@admin_router.get("/bandit")
async def admin_bandit(request: Request) -> BanditSummary:
    return _reranker(request).summary()


@admin_router.post("/bandit/snapshot")
async def admin_snapshot(request: Request) -> SnapshotResponse:
    reranker = _reranker(request)
    await reranker.snapshot()
    return SnapshotResponse(snapshot=True, feedback_seq=reranker.summary().feedback_seq)


@admin_router.get("/ope")
async def admin_ope(request: Request, alpha: str = "0.1,2", bootstrap: int = 500) -> OPEReport:
    """Off-policy estimates of other RM-selection policies on this server's log (what
    `laser-server ope --data-dir` prints), computed off the event loop."""
    from laser.server.ope import LogError, default_policies, evaluate, read_log

    if not 100 <= bootstrap <= 5000:
        raise BadRequestError("bootstrap must be in [100, 5000]", param="bootstrap")
    try:
        alphas = [float(a) for a in alpha.split(",") if a.strip()]
    except ValueError:
        raise BadRequestError("alpha: comma-separated numbers", param="alpha") from None
    settings: Settings = request.app.state.settings

    def run() -> OPEReport:
        log = read_log(settings.store_location)
        report = evaluate(log, default_policies(log, settings.bandit, alphas), n_boot=bootstrap)
        return OPEReport.model_validate(report)

    try:
        return await asyncio.to_thread(run)
    except LogError as exc:
        raise ConflictError(str(exc), code="no_logged_feedback") from None
