"""Wire models of the native API (`/generate`, `/feedback`) and the one error shape."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every non-2xx answer: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class GenerateRequest(BaseModel):
    """Best-of-n generation. Give `prompt` or chat `messages`, not both."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, description="the user's question or instruction")
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    model: str | None = Field(
        None,
        max_length=256,
        description="the base model's name or a served adapter's (GET /v1/models); default "
        "the live policy",
    )
    document: str | None = Field(None, description="one document for long-context QA")
    documents: list[str] | None = Field(None, description="several documents (multi-doc QA)")
    document_policy: Literal["truncate", "reject"] | None = Field(
        None, description="a document too long for the context: cut it (default) or 400"
    )
    n: int | None = Field(None, ge=1, description="candidates to sample (default 4)")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] | str | None = None
    reward_model: str | None = Field(None, description="force this RM instead of the bandit's")
    task: str | None = Field(None, max_length=64, description="optional task hint")
    reference: str | None = Field(None, description="gold answer, for evaluation")
    return_candidates: bool = False
    raw: bool = Field(
        False, description="feed `prompt` as-is, without the chat template (/v1/completions)"
    )

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("`prompt` is empty")
        if self.document is not None and self.documents is not None:
            raise ValueError("give `document` or `documents`, not both")
        return self

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str] | str | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 8 or any(not s for s in stops):
            raise ValueError("at most 8 non-empty stop strings")
        return stops


class Candidate(BaseModel):
    text: str
    score: float | None
    finish_reason: str | None
    tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    id: str
    text: str
    reward_model: str
    score: float
    index: int = Field(description="index of the chosen candidate among the n")
    propensity: float
    selection: Literal["bandit", "forced", "fallback", "abstain", "none"] = Field(
        description="bandit: the bandit drew the RM; forced: the request named it; fallback: "
        "the drawn RM failed and the next scored; abstain: the drawn RM scored every "
        "candidate alike and the next chose; none: one candidate, all alike or no RM with a "
        "preference, so no RM could matter and feedback on this answer teaches no RM"
    )
    model: str
    candidates: list[Candidate] | None = None
    usage: Usage
    timings_ms: dict[str, float]
    document_truncated: bool = False
    correct: bool | None = Field(None, description="agreement with `reference`, when given")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)
    reward: float | bool = Field(description="in [0, 1], or true/false (thumbs up/down)")

    @field_validator("reward")
    @classmethod
    def _range(cls, v: float | bool) -> float:
        r = float(v)
        if not math.isfinite(r) or not 0.0 <= r <= 1.0:
            raise ValueError("reward must be a finite number in [0, 1] or a boolean")
        return r


class FeedbackResponse(BaseModel):
    id: str
    reward: float
    reward_model: str
    applied: bool
    seq: int = Field(description="the feedback's place in the log (commit order)")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    document: str | None = None
    task: str | None = Field(None, max_length=64)


class ArmPrediction(BaseModel):
    expectation: float
    width: float
    ucb: float


class PredictResponse(BaseModel):
    """What the bandit expects of each enabled RM for a query (no choice is made or logged)."""

    arms: dict[str, ArmPrediction]


class ArmStatus(BaseModel):
    """One RM as the bandit and the RM pool see it (`/health`, `/admin/reward-models`). What
    it learnt (`updates`, `selected`, `errors`, `input_errors`, `mean_feedback`, `last_error`)
    is null in the open `/health` of a server with an API key, for a request without the key."""

    enabled: bool
    available: bool = Field(
        True, description="false: the RM could not be built at start-up (see last_error)"
    )
    updates: int | None = Field(description="rewarded decisions the bandit learnt from")
    selected: int | None
    errors: int | None
    input_errors: int | None = Field(
        None, description="requests it could not score for their input (no circuit effect)"
    )
    mean_feedback: float | None
    last_error: str | None
    circuit: Literal["closed", "open", "half_open"] | None = None
    consecutive_errors: int | None = None
    circuit_trips: int | None = None
    retry_in_s: float | None = None


class BanditConfigInfo(BaseModel):
    dim: int
    alpha: float
    ridge: float
    epsilon: float
    warmup: int
    regions: int
    context: str


class BanditSummary(BaseModel):
    arms: dict[str, ArmStatus]
    config: BanditConfigInfo
    feedback_seq: int


class SnapshotResponse(BaseModel):
    snapshot: bool
    feedback_seq: int


class EngineInfo(BaseModel):
    dtype: str | None = Field(None, description="the in-process engine's dtype (null: remote)")
    dtype_reason: str | None = None
    cpu_threads_bind: str | None = Field(
        None, description="CPU: the cores vLLM's worker threads were bound to (all, vllm, ...)"
    )


class AdmissionStatus(BaseModel):
    active: int
    waiting: int
    max_concurrent: int
    max_queue: int
    rejected: dict[str, int]


class StoreCounts(BaseModel):
    decisions: int
    feedback: int


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    detail: Literal["full", "public"] = Field(
        "full",
        description="public: a server with an API key answering a request without it: what "
        "a load balancer needs (status, engine, RM availability and circuits, admission); "
        "faults without their details, no learnt state, no store counts",
    )
    faults: list[str]
    model: str
    engine: EngineInfo
    reward_models: dict[str, ArmStatus]
    counts: StoreCounts | None
    admission: AdmissionStatus


class TrainingJob(BaseModel):
    """A training job (`/v1/training/jobs`): its state and progress."""

    id: str
    state: Literal["running", "cancelling", "succeeded", "failed", "cancelled"]
    created: float
    updated: float
    pid: int | None
    exit_code: int | None
    attempts: int
    error: str | None
    selector: str
    iteration: int
    iterations: int
    step: int
    steps: int | None
    last_loss: float | None
    rm_counts: dict[str, int]
    adapter: str | None = Field(description="the latest checkpoint's LoRA adapter folder")
    log_tail: str


class TrainingJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TrainingJob]


class PolicyAdapter(BaseModel):
    name: str
    path: str


class PolicyView(BaseModel):
    """What generation serves (`/v1/policy`): the base model, or a LoRA adapter on it."""

    model: str
    adapter: PolicyAdapter | None
    supports_adapters: bool


# -- OpenAI-compatible wire models (`/v1/completions`, `/v1/chat/completions`, `/v1/models`) --
class LaserExtras(BaseModel):
    """Our additions to an OpenAI response, under its `laser` key."""

    id: str = Field(description="the decision id, for POST /feedback")
    reward_model: str
    selection: Literal["bandit", "forced", "fallback", "abstain", "none"]
    propensity: float
    scores: list[float | None]
    chosen_index: int
    choice_indices: list[int] = Field(description="candidate indices, best score first")
    timings_ms: dict[str, float]
    document_truncated: bool
    correct: bool | None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    laser: LaserExtras | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    laser: LaserExtras


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    laser: LaserExtras | None = None


class ModelCardExtras(BaseModel):
    live: bool = Field(description="what a request without `model` is served by")
    adapter_path: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "laser-server"
    parent: str | None = None
    laser: ModelCardExtras


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- off-policy evaluation (`GET /admin/ope`) ---------------------------------------------------
class Interval(BaseModel):
    value: float
    low: float = Field(description="95% bootstrap interval, low end")
    high: float


class PolicyEstimateOut(BaseModel):
    policy: str
    kind: Literal["static", "learner", "logged"]
    n: int
    ips: Interval
    snips: Interval
    dr: Interval
    ess: float = Field(description="effective sample size of the importance weights")
    max_weight: float
    match: float = Field(description="mean probability the policy gives the logged RM")
    unsupported: float | None = Field(
        description="mean probability on RMs the logged policy could not choose"
    )
    status: Literal["ok", "weak", "partial", "unsupported"]
    warnings: list[str]


class OPEReport(BaseModel):
    """What other RM-selection policies would have scored on the logged traffic."""

    n: int = Field(description="decisions drawn by the bandit, with feedback")
    excluded: dict[str, int] = Field(description="decisions left out, by reason")
    arms: list[str]
    logged_rm_counts: dict[str, int]
    min_propensity: float
    observed: Interval = Field(description="the logged policy's observed mean reward")
    bootstrap: int
    policies: list[PolicyEstimateOut]


class DecisionSummary(BaseModel):
    """One row of `GET /admin/decisions` (newest first)."""

    id: str
    created: float
    question: str = Field(description="the question (documents not included), first 300 chars")
    task: str | None
    has_document: bool
    kind: str = Field(description="the kind of query the bandit saw (math, mc, qa, general)")
    reward_model: str
    selection: str
    drawn: str | None
    propensity: float
    chosen: int
    score: float | None
    model: str
    feedback: float | None


class DecisionPageResponse(BaseModel):
    decisions: list[DecisionSummary]
    next: str | None = Field(description="pass as `before` for the next page; null: the end")


class DecisionCandidate(BaseModel):
    text: str | None
    chosen: bool
    scores: dict[str, float] = Field(description="every RM that scored it, by name")


class DecisionDetail(DecisionSummary):
    """`GET /admin/decisions/{id}`: the whole logged decision."""

    question: str
    candidates: list[DecisionCandidate]
    agree: list[str] = Field(description="RMs whose pick was the returned answer")
    abstain: list[str] = Field(description="RMs that scored every candidate alike")
    probabilities: dict[str, float] | None
    context: list[float]
    timings_ms: dict[str, float] = Field(description="time per stage until the decision")
