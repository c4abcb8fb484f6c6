"""The native routes (`/generate`, `/feedback`, `/health`, `/bandit`, `/metrics`) and the
admin routes. Thin: each reads the reranker from `app.state` and calls one method of it.
The OpenAI-compatible routes are in `openai_routes.py`, training jobs in
`training_routes.py`."""

from __future__ import annotations

import asyncio
import math
import sqlite3

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from laser.server.api.auth import has_key, require_admin, require_user
from laser.server.api.generation import run_generate
from laser.server.config import RewardModelSpec, Settings, redact
from laser.server.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    UnprocessableError,
)
from laser.server.outbound import HostNotAllowedError, check_url
from laser.server.paths import PathOptionError, confine_options
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
from laser.server.reranker import Reranker
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
    """Open to load balancers. With an API key set, a request without it sees what routing
    needs (status, engine, RM availability and circuits, admission) and nothing the bandit
    learnt, no store counts and no fault details (they name hosts and ports)."""
    reranker = _reranker(request)
    full = has_key(request)
    faults = reranker.faults() if full else reranker.public_faults()
    counts: StoreCounts | None = None
    try:  # bounded: a probe must answer even while a remote store hangs
        counts = StoreCounts(**await asyncio.wait_for(reranker.store.counts(), 2.0))
    except sqlite3.Error as exc:
        faults = [*faults, f"store: {redact(str(exc))}" if full else "store: unavailable"]
    except TimeoutError:
        faults = [*faults, "store: no answer within 2 s"]
    arms = reranker.summary().arms
    if not full:
        learnt = ("updates", "selected", "errors", "input_errors", "mean_feedback", "last_error")
        hidden = dict.fromkeys(learnt)
        arms = {name: arm.model_copy(update=hidden) for name, arm in arms.items()}
    return HealthResponse(
        status="degraded" if faults else "ok",
        detail="full" if full else "public",
        faults=faults,
        model=reranker.engine.model_name,
        engine=EngineInfo(
            dtype=getattr(reranker.engine, "dtype", None),
            dtype_reason=getattr(reranker.engine, "dtype_reason", None),
            cpu_threads_bind=getattr(reranker.engine, "cpu_threads_bind", None),
        ),
        reward_models=arms,
        counts=counts if full else None,
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


def check_no_secret(options: dict[str, object], param: str = "options.api_key") -> None:
    """A 400 when an RM given over the API carries a token VALUE: it would be written to
    the store; name where it lives instead (`api_key_env` or `api_key_file`)."""
    if options.get("api_key"):
        raise BadRequestError(
            "a token sent over the API would be stored; put it in an environment variable or "
            "a file of the server's and name it with options.api_key_env or "
            "options.api_key_file",
            param=param,
            code="secret_not_allowed",
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
    check_no_secret(spec.options)
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


OPE_MAX_ALPHAS = 8


def _ope_alphas(text: str) -> list[float]:
    """The LinUCB widths `/admin/ope` replays: at most `OPE_MAX_ALPHAS` finite numbers >= 0
    (each one is a full replay of the log), else a 422 naming `alpha`."""
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        alphas = [math.nan]
    if len(alphas) > OPE_MAX_ALPHAS or not all(math.isfinite(a) and a >= 0 for a in alphas):
        raise UnprocessableError(
            f"alpha: at most {OPE_MAX_ALPHAS} comma-separated finite numbers >= 0",
            param="alpha",
            code="validation_error",
        )
    return alphas


@admin_router.get("/ope")
async def admin_ope(request: Request, alpha: str = "0.1,2", bootstrap: int = 500) -> OPEReport:
    """Off-policy estimates of other RM-selection policies on this server's log (what
    `laser-server ope --data-dir` prints), computed off the event loop."""
    from laser.server.ope import LogError, default_policies, evaluate, read_log

    if not 100 <= bootstrap <= 5000:
        raise BadRequestError("bootstrap must be in [100, 5000]", param="bootstrap")
    alphas = _ope_alphas(alpha)
    settings: Settings = request.app.state.settings

    def run() -> OPEReport:
        log = read_log(settings.store_location)
        report = evaluate(log, default_policies(log, settings.bandit, alphas), n_boot=bootstrap)
        return OPEReport.model_validate(report)

    try:
        return await asyncio.to_thread(run)
    except LogError as exc:
        raise ConflictError(str(exc), code="no_logged_feedback") from None
