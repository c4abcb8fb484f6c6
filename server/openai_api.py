"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

`best_of` (or `n` when `best_of` is absent) candidates are sampled in one engine call and
reranked by the RM the bandit picks; the top `n` come back, best first. Our extras sit
under one `laser` key; extra request fields (the SDK's `extra_body`: `document`,
`documents`, `document_policy`, `reward_model`, `task`, `reference`) ride in the body.
Streaming is refused with a 400: the answer is known only after every candidate is scored.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from laser.server.admission import check_input_size
from laser.server.errors import BadRequestError, ConflictError
from laser.server.pipeline import Reranker
from laser.server.protocol import ChatMessage, GenerateRequest, GenerateResponse

router = APIRouter(prefix="/v1")


class _OpenAIBase(BaseModel):
    # Unknown OpenAI fields we do not implement (user, seed, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    n: int = Field(1, ge=1)
    best_of: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] | str | None = None
    stream: bool = False
    # laser extras (extra_body)
    document: str | None = None
    documents: list[str] | None = None
    document_policy: Literal["truncate", "reject"] | None = None
    reward_model: str | None = None
    task: str | None = Field(None, max_length=64)
    reference: str | None = None


class CompletionRequest(_OpenAIBase):
    prompt: str | list[str]


class ChatCompletionRequest(_OpenAIBase):
    messages: list[ChatMessage] = Field(min_length=1)


def _to_generate(body: _OpenAIBase, **input_: Any) -> GenerateRequest:
    if body.stream:
        raise BadRequestError(
            "stream=true is not supported: the answer is chosen only after all candidates are "
            "generated and scored; send stream=false",
            param="stream",
            code="stream_not_supported",
        )
    total = body.best_of if body.best_of is not None else body.n
    if total < body.n:
        raise BadRequestError(f"best_of ({total}) must be >= n ({body.n})", param="best_of")
    try:
        return GenerateRequest(
            **input_,
            document=body.document,
            documents=body.documents,
            document_policy=body.document_policy,
            n=total,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,
            reward_model=body.reward_model,
            task=body.task,
            reference=body.reference,
            return_candidates=True,
        )
    except ValidationError as exc:  # e.g. an empty prompt: the caller's mistake, a 422
        raise RequestValidationError(exc.errors()) from None


def _laser(result: GenerateResponse) -> dict[str, Any]:
    assert result.candidates is not None
    return {
        "id": result.id,
        "reward_model": result.reward_model,
        "selection": result.selection,
        "propensity": result.propensity,
        "scores": [c.score for c in result.candidates],
        "chosen_index": result.index,
        "choice_indices": _order(result),
        "timings_ms": result.timings_ms,
        "document_truncated": result.document_truncated,
        "correct": result.correct,
    }


def _order(result: GenerateResponse) -> list[int]:
    """Candidate indices, best score first (the chosen one first on ties)."""
    assert result.candidates is not None
    cands = result.candidates
    return sorted(range(len(cands)), key=lambda i: (-(cands[i].score or 0.0), i != result.index))


def _ranked(result: GenerateResponse, n: int) -> list[Any]:
    assert result.candidates is not None
    return [result.candidates[i] for i in _order(result)[:n]]


async def run_generate(request: Request, req: GenerateRequest, prefix: str) -> GenerateResponse:
    """Shared by every generation route: the id (`X-Request-Id` or a new one), then the run."""
    reranker: Reranker = request.app.state.reranker
    given = request.headers.get("x-request-id")
    if given is not None and len(given) > 128:
        raise BadRequestError("X-Request-Id is longer than 128 characters", param="X-Request-Id")
    request_id = given or f"{prefix}-{uuid.uuid4().hex}"
    check_input_size(req, reranker.settings)
    # Back-pressure: a bounded number run, a bounded number wait, the rest get 429 at once.
    async with request.app.state.admission.slot():
        try:
            # Ids the caller chose are checked before any work; ours are fresh uuid4s.
            return await reranker.generate(req, request_id, check_id=given is not None)
        except sqlite3.IntegrityError:  # the same id raced in twice: the first one stands
            raise ConflictError(f"request id {request_id!r} was used already", param="id") from None


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> dict[str, Any]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise BadRequestError("send one prompt per request", param="prompt")
    result = await run_generate(request, _to_generate(body, prompt=prompts[0], raw=True), "cmpl")
    return {
        "id": result.id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [
            {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
            for i, c in enumerate(_ranked(result, body.n))
        ],
        "usage": result.usage.model_dump(),
        "laser": _laser(result),
    }


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> dict[str, Any]:
    result = await run_generate(request, _to_generate(body, messages=body.messages), "chatcmpl")
    return {
        "id": result.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
            for i, c in enumerate(_ranked(result, body.n))
        ],
        "usage": result.usage.model_dump(),
        "laser": _laser(result),
    }


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    reranker: Reranker = request.app.state.reranker
    adapter = reranker.adapter
    data: list[dict[str, Any]] = [
        {
            "id": reranker.engine.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "laser-server",
            "laser": {"live": adapter is None},
        }
    ]
    if adapter is not None:  # a trained LoRA adapter is serving (POST /v1/policy)
        data.append(
            {
                "id": adapter.name,
                "object": "model",
                "created": 0,
                "owned_by": "laser-server",
                "parent": reranker.engine.model_name,
                "laser": {"live": True, "adapter_path": adapter.path},
            }
        )
    return {"object": "list", "data": data}
