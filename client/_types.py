"""Typed replies. Unknown fields are kept (`extra="allow"`): newer servers stay readable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Candidate(_Model):
    text: str
    score: float | None = None
    finish_reason: str | None = None
    tokens: int = 0


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResult(_Model):
    id: str
    text: str
    reward_model: str
    score: float
    index: int
    propensity: float
    selection: str
    model: str
    candidates: list[Candidate] | None = None
    usage: Usage
    timings_ms: dict[str, float] = {}
    document_truncated: bool = False
    correct: bool | None = None


class FeedbackResult(_Model):
    id: str
    reward: float
    reward_model: str
    applied: bool
    seq: int | None = None  # the feedback's place in the log (None from older servers)


class Health(_Model):
    status: str
    model: str
    reward_models: dict[str, dict[str, object]]
    counts: dict[str, int] | None = None  # None: the store is down, or the key was not sent
    detail: str = "full"  # "public": a keyed server answering without the key
