"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

`best_of` candidates (absent: the server's `openai_best_of`, default 4, or `n` if larger)
are sampled in one engine call and reranked by the RM the bandit picks; the top `n` come
back, best first, also with `stream=true`. Our extras sit
under one `laser` key; extra request fields (the SDK's `extra_body`: `document`,
`documents`, `document_policy`, `reward_model`, `task`, `reference`) ride in the body.

`model` chooses the policy as with OpenAI: the base model's name, a served adapter's name
(both listed by `/v1/models`), or nothing for the live policy; any other name is a 404.
`stream=true` is answered as server-sent events in OpenAI's chunk format. The answer is known
only once every candidate is scored, so the events come after that, at once: a client that
streams by default works, it just sees the whole text in one chunk per choice. Errors before
that point are ordinary JSON error responses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from laser.server.api.auth import has_key
from laser.server.api.generation import run_generate
from laser.server.config import Settings
from laser.server.errors import BadRequestError
from laser.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessage,
    CompletionChoice,
    CompletionResponse,
    GenerateRequest,
    GenerateResponse,
    LaserExtras,
    ModelCard,
    ModelCardExtras,
    ModelList,
)
from laser.server.reranker import Reranker

router = APIRouter(prefix="/v1")
# `stream=true` answers are server-sent events: documented beside the JSON body.
_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                # Each event: `data:` holds one chunk as JSON, the last one `[DONE]`.
                "schema": {
                    "type": "object",
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                    "required": ["data"],
                }
            }
        },
        "description": "the answer; with stream=true as server-sent events (OpenAI's chunks)",
    }
}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAIBase(BaseModel):
    # Unknown OpenAI fields we do not implement (user, seed, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=256)
    n: int = Field(1, ge=1)
    best_of: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] | str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
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


def _to_generate(body: _OpenAIBase, settings: Settings, **input_: Any) -> GenerateRequest:
    """The native request an OpenAI one stands for. Without `best_of`, the server samples
    `openai_best_of` candidates (at least `n`, at most `n_max`; `n` with temperature 0), so a
    client that knows nothing of reranking still gets the best of several; with `stream=true`
    too, since the events are sent once the answer is chosen anyway."""
    if body.best_of is not None:
        total = body.best_of
    elif body.temperature == 0:  # greedy: every sample would be the same text
        total = body.n
    else:
        total = max(body.n, min(settings.openai_best_of, settings.n_max))
    if total < body.n:
        raise BadRequestError(f"best_of ({total}) must be >= n ({body.n})", param="best_of")
    try:
        return GenerateRequest(
            **input_,
            model=body.model,
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


def _laser(result: GenerateResponse) -> LaserExtras:
    assert result.candidates is not None
    return LaserExtras(
        id=result.id,
        reward_model=result.reward_model,
        selection=result.selection,
        propensity=result.propensity,
        scores=[c.score for c in result.candidates],
        chosen_index=result.index,
        choice_indices=_order(result),
        timings_ms=result.timings_ms,
        document_truncated=result.document_truncated,
        correct=result.correct,
    )


def _order(result: GenerateResponse) -> list[int]:
    """Candidate indices, best score first (the chosen one first on ties)."""
    assert result.candidates is not None
    cands = result.candidates
    return sorted(range(len(cands)), key=lambda i: (-(cands[i].score or 0.0), i != result.index))


def _ranked(result: GenerateResponse, n: int) -> list[Any]:
    assert result.candidates is not None
    return [result.candidates[i] for i in _order(result)[:n]]


def _sse(events: Iterator[BaseModel]) -> StreamingResponse:
    def body() -> Iterator[str]:
        for event in events:
            yield f"data: {event.model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


def _completion(result: GenerateResponse, n: int) -> CompletionResponse:
    return CompletionResponse(
        id=result.id,
        created=int(time.time()),
        model=result.model,
        choices=[
            CompletionChoice(index=i, text=c.text, finish_reason=c.finish_reason)
            for i, c in enumerate(_ranked(result, n))
        ],
        usage=result.usage,
        laser=_laser(result),
    )


def _completion_events(full: CompletionResponse, usage: bool) -> Iterator[BaseModel]:
    """The text of each choice, then its finish reason, then (if asked) the usage."""
    head = {"id": full.id, "created": full.created, "model": full.model}
    for c in full.choices:
        yield CompletionResponse(
            **head, choices=[CompletionChoice(index=c.index, text=c.text, finish_reason=None)]
        )
    yield CompletionResponse(
        **head,
        choices=[
            CompletionChoice(index=c.index, text="", finish_reason=c.finish_reason)
            for c in full.choices
        ],
        laser=full.laser,
    )
    if usage:
        yield CompletionResponse(**head, choices=[], usage=full.usage)


@router.post("/completions", response_model=CompletionResponse, responses=_STREAMED)
async def completions(body: CompletionRequest, request: Request) -> Any:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise BadRequestError("send one prompt per request", param="prompt")
    req = _to_generate(body, request.app.state.settings, prompt=prompts[0], raw=True)
    result = await run_generate(request, req, "cmpl")
    full = _completion(result, body.n)
    if body.stream:
        include = body.stream_options is not None and body.stream_options.include_usage
        return _sse(_completion_events(full, include))
    return full


def _chat_events(full: ChatCompletionResponse, usage: bool) -> Iterator[BaseModel]:
    """OpenAI's order: the role, the content, then the finish reason; usage last if asked."""
    head = {"id": full.id, "created": full.created, "model": full.model}
    for c in full.choices:
        yield ChatCompletionChunk(
            **head,
            choices=[ChatChunkChoice(index=c.index, delta=ChatDelta(role="assistant", content=""))],
        )
        yield ChatCompletionChunk(
            **head,
            choices=[ChatChunkChoice(index=c.index, delta=ChatDelta(content=c.message.content))],
        )
    yield ChatCompletionChunk(
        **head,
        choices=[
            ChatChunkChoice(index=c.index, delta=ChatDelta(), finish_reason=c.finish_reason)
            for c in full.choices
        ],
        laser=full.laser,
    )
    if usage:
        yield ChatCompletionChunk(**head, choices=[], usage=full.usage)


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=_STREAMED)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    req = _to_generate(body, request.app.state.settings, messages=body.messages)
    result = await run_generate(request, req, "chatcmpl")
    full = ChatCompletionResponse(
        id=result.id,
        created=int(time.time()),
        model=result.model,
        choices=[
            ChatChoice(
                index=i,
                message=AssistantMessage(content=c.text),
                finish_reason=c.finish_reason,
            )
            for i, c in enumerate(_ranked(result, body.n))
        ],
        usage=result.usage,
        laser=_laser(result),
    )
    if body.stream:
        include = body.stream_options is not None and body.stream_options.include_usage
        return _sse(_chat_events(full, include))
    return full


@router.get("/models")
async def models(request: Request) -> ModelList:
    reranker: Reranker = request.app.state.reranker
    adapter = reranker.adapter
    data = [ModelCard(id=reranker.engine.model_name, laser=ModelCardExtras(live=adapter is None))]
    if adapter is not None:  # a trained LoRA adapter is serving (POST /v1/policy)
        data.append(
            ModelCard(
                id=adapter.name,
                parent=reranker.engine.model_name,
                # Where the adapter lies on disk is for the operator, not every caller.
                laser=ModelCardExtras(
                    live=True, adapter_path=adapter.path if has_key(request) else None
                ),
            )
        )
    return ModelList(data=data)
