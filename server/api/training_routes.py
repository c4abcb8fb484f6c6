"""Admin routes for training jobs and the served policy.

- `POST /v1/training/jobs`: a TrainConfig (JSON) plus optional inline `items` and
  `seed_from_server`; 201 with the job, 409 while another job runs.
- `GET /v1/training/jobs`, `GET /v1/training/jobs/{id}`: state, iteration, step, last loss,
  RM counts, log tail. `DELETE /v1/training/jobs/{id}`: cancel.
- `GET /v1/policy`, `POST /v1/policy` `{"job_id"} | {"path"} | {"base": true}`: switch serving
  to a trained LoRA adapter (or back) without a restart; the choice survives restarts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from laser.server.config import RewardModelSpec
from laser.server.engines.base import Adapter, EngineError
from laser.server.errors import BadRequestError, ConflictError, ForbiddenError, NotFoundError
from laser.server.paths import PathNotAllowedError, PathOptionError, confine, confine_options
from laser.server.protocol import PolicyAdapter, PolicyView, TrainingJob, TrainingJobList
from laser.server.training.config import TrainConfig
from laser.server.training.jobs import JobConflictError, JobManager, UnknownJobError

log = logging.getLogger("laser.server.training")
router = APIRouter(prefix="/v1")
T = TypeVar("T")
_adapter_ids = itertools.count(1)


class TrainingJobRequest(TrainConfig):
    """A TrainConfig, plus where its prompts come from when not from a file."""

    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] | None = Field(
        None, max_length=100_000, description="prompts inline (the JSONL fields)"
    )
    seed_from_server: bool = Field(
        False,
        description="train on the prompts this server has answered, starting from its bandit",
    )
    seed_prompts: Literal["feedback", "all"] = Field(
        "feedback",
        description="with seed_from_server, which answered prompts: `feedback` (default): only "
        "those whose answer got feedback, which needs the API key when one is set, so open "
        "generation alone cannot choose what the policy learns; `all`: every answered prompt",
    )
    seed_since: float | None = Field(
        None, description="with seed_from_server: only prompts answered at or after (unix s)"
    )
    seed_until: float | None = Field(
        None, description="with seed_from_server: only prompts answered before (unix s)"
    )


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, max_length=64)
    path: str | None = Field(None, max_length=4096)
    base: bool = False
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")


def _jobs(request: Request) -> JobManager:
    jobs: JobManager = request.app.state.jobs
    return jobs


async def _on_job(request: Request, action: Callable[[JobManager, str], T], job_id: str) -> T:
    """`action(jobs, job_id)` on the job manager's thread; an unknown job id is a 404."""
    jobs = _jobs(request)
    try:
        return await jobs.call(action, jobs, job_id)
    except UnknownJobError:
        raise NotFoundError(f"no training job {job_id!r}", param="job_id") from None


def _confined(value: str, param: str, roots: list[Path]) -> str:
    try:
        return str(confine(value, roots))
    except PathNotAllowedError as exc:
        raise ForbiddenError(str(exc), param=param, code="path_not_allowed") from None
    except (ValueError, OSError) as exc:
        raise BadRequestError(f"{param} is not a usable path: {exc}", param=param) from None


async def _seed_items(
    request: Request, body: TrainingJobRequest, limit: int = 10_000
) -> tuple[list[Any], Any]:
    """The distinct prompts this server answered that `body` selects (newest first) and a
    copy of its bandit."""
    from laser.server.data import PromptItem

    reranker = request.app.state.reranker
    rows = await reranker.store.answered_prompts(
        limit,
        with_feedback=body.seed_prompts == "feedback",
        since=body.seed_since if body.seed_since is not None else 0.0,
        until=body.seed_until if body.seed_until is not None else 1e18,
    )
    return [PromptItem(prompt=p, task=t) for p, t in rows], reranker.bandit_copy()


@router.post("/training/jobs", status_code=201)
async def submit_job(body: TrainingJobRequest, request: Request) -> TrainingJob:
    from laser.server.api.routes import check_no_secret, check_outbound
    from laser.server.data import DataError, parse_item

    settings = request.app.state.settings
    roots = settings.api_path_roots
    seed_fields = {"seed_from_server", "seed_prompts", "seed_since", "seed_until"}
    fields = body.model_dump(exclude={"items", *seed_fields})
    for key in ("prompts", "eval_prompts", "model"):
        if fields[key]:
            fields[key] = _confined(fields[key], key, roots)
    for i, rm in enumerate(fields["reward_models"]):
        check_no_secret(rm["options"], f"reward_models.{i}.options.api_key")
        try:
            rm["options"] = confine_options(rm["kind"], rm["options"], roots)
        except PathOptionError as exc:
            err = BadRequestError if exc.allowed else ForbiddenError
            raise err(str(exc), param=f"reward_models.{i}.options.{exc.option}") from None
        check_outbound(
            RewardModelSpec.model_validate(rm),
            settings.outbound_hosts,
            param=f"reward_models.{i}.options.url",
        )
    fields["outbound_hosts"] = settings.outbound_hosts  # the job calls what the server may
    if "vllm" not in body.model_fields_set:  # sample as the server's engine does (dtype, ...)
        fields["vllm"] = settings.engine.without_secrets()  # no token in jobs.db
    elif body.vllm.api_key is not None:
        raise BadRequestError(
            "vllm.api_key would be stored with the job; name it with vllm.api_key_env",
            param="vllm.api_key",
            code="secret_not_allowed",
        )
    # Contexts must match the server's, so a bandit seeded from it means the same thing;
    # the bandit runs as the server's (alpha, epsilon, warm-up) unless the job sets it.
    fields["featurizer"] = settings.featurizer.model_dump()
    if "bandit" not in body.model_fields_set:
        fields["bandit"] = settings.bandit.model_dump()
    items, bandit = None, None
    if body.seed_from_server:
        if body.items is not None or body.prompts:
            raise BadRequestError("seed_from_server takes no items or prompts", param="items")
        items, bandit = await _seed_items(request, body)
        if not items:
            which = "with feedback " if body.seed_prompts == "feedback" else ""
            raise BadRequestError(
                f"this server has answered no prompts {which}in that window yet",
                param="seed_prompts",
            )
        if body.selector != "laser":
            bandit = None
    elif body.items is not None:
        try:
            items = [parse_item(obj, f"items[{i}]") for i, obj in enumerate(body.items)]
        except DataError as exc:
            raise BadRequestError(str(exc), param="items") from None
        if not items:
            raise BadRequestError("items is empty", param="items")
    elif not body.prompts:
        raise BadRequestError("give prompts (a file), items, or seed_from_server", param="prompts")
    fields["output_dir"] = "unused"  # the job manager puts it under the data dir
    cfg = TrainConfig.model_validate(fields)
    jobs = _jobs(request)
    try:
        return await jobs.call(jobs.submit, cfg, items=items, initial_bandit=bandit)
    except JobConflictError as exc:
        raise ConflictError(str(exc), code="job_running") from None


@router.get("/training/jobs")
async def list_jobs(request: Request) -> TrainingJobList:
    jobs = _jobs(request)
    return TrainingJobList(data=await jobs.call(jobs.list))


@router.get("/training/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> TrainingJob:
    return await _on_job(request, JobManager.get, job_id)


@router.delete("/training/jobs/{job_id}")
async def cancel_job(job_id: str, request: Request) -> TrainingJob:
    return await _on_job(request, JobManager.cancel, job_id)


def policy_view(request: Request) -> PolicyView:
    reranker = request.app.state.reranker
    adapter: Adapter | None = reranker.adapter
    return PolicyView(
        model=reranker.engine.model_name,
        adapter=None if adapter is None else PolicyAdapter(name=adapter.name, path=adapter.path),
        supports_adapters=bool(getattr(reranker.engine, "supports_adapters", False)),
    )


def _policy_file(request: Request) -> Path:
    return Path(request.app.state.settings.data_dir) / "policy.json"


@router.get("/policy")
async def get_policy(request: Request) -> PolicyView:
    return policy_view(request)


@router.post("/policy")
async def set_policy(body: PolicyRequest, request: Request) -> PolicyView:
    reranker = request.app.state.reranker
    if sum([body.job_id is not None, body.path is not None, body.base]) != 1:
        raise BadRequestError("give exactly one of job_id, path or base=true", param="job_id")
    if body.base:
        await asyncio.to_thread(_policy_file(request).unlink, missing_ok=True)
        reranker.use_adapter(None)
        log.info("serving the base model")
        return policy_view(request)
    if body.job_id is not None:  # looked up first: an id is never a path of its own
        try:
            path = await _on_job(request, JobManager.adapter_path, body.job_id) or ""
        except FileNotFoundError as exc:
            raise NotFoundError(
                f"no adapter for job {body.job_id!r}: {exc}", param="job_id"
            ) from None
        name = body.name or body.job_id
    if not getattr(reranker.engine, "supports_adapters", False):
        raise ConflictError(
            "this engine was started without LoRA support; set engine.enable_lora = true",
            code="adapters_not_supported",
        )
    if body.job_id is None:
        assert body.path is not None
        path = _confined(body.path, "path", request.app.state.settings.api_path_roots)
        name = body.name or Path(path).name
    if not await asyncio.to_thread((Path(path) / "adapter_config.json").is_file):
        raise BadRequestError(f"{path} holds no LoRA adapter (adapter_config.json)", param="path")
    adapter = Adapter(name, path, next(_adapter_ids))
    try:  # loaded and tried now: a wrong adapter is the caller's error here, not a later 503
        await reranker.try_adapter(adapter)
    except EngineError as exc:
        raise BadRequestError(
            f"the adapter does not load into {reranker.engine.model_name}: {exc}", param="path"
        ) from None
    # Written before it takes effect: the choice survives a restart once acknowledged.
    await asyncio.to_thread(_save_policy, _policy_file(request), name, path)
    reranker.use_adapter(adapter)
    log.info("serving adapter %s (%s)", name, path)
    return policy_view(request)


def _save_policy(path: Path, name: str, adapter_path: str) -> None:
    from laser.server.runtime import write_atomic_text

    write_atomic_text(path, json.dumps({"name": name, "path": adapter_path}))


def restore_policy(state: Any) -> None:
    """At start-up: serve the adapter chosen before the restart, if it is still there."""
    path = Path(state.settings.data_dir) / "policy.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not getattr(state.reranker.engine, "supports_adapters", False):
            raise ValueError("engine has no LoRA support")
        if not (Path(saved["path"]) / "adapter_config.json").is_file():
            raise FileNotFoundError(saved["path"])
        state.reranker.use_adapter(Adapter(saved["name"], saved["path"], next(_adapter_ids)))
        log.info("serving adapter %s again (chosen before the restart)", saved["name"])
    except (OSError, ValueError, KeyError) as exc:
        fault = (
            f"the saved policy was not restored ({type(exc).__name__}: {exc}); "
            "serving the base model"
        )
        state.reranker.policy_fault = fault
        log.warning(fault)
