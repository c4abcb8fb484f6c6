"""The decision log over HTTP (behind the API key): `GET /admin/decisions`, a page of
decisions newest first with filters and a keyset cursor, and `GET /admin/decisions/{id}`,
one decision whole (every candidate with every RM score computed for it, the feedback).
Pages come from an index on (created, id), so a page costs the same at any depth of a large
log (`bench/decisions_page.py`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request

from laser.server.errors import BadRequestError, NotFoundError
from laser.server.featurize import query_kind
from laser.server.kinds import KINDS
from laser.server.priors import kind_context
from laser.server.protocol import (
    DecisionCandidate,
    DecisionDetail,
    DecisionPageResponse,
    DecisionSummary,
)
from laser.server.reranker import Reranker
from laser.server.store.base import Decision, DecisionPage

router = APIRouter(prefix="/admin")


@router.get("/bandit/kinds")
async def bandit_by_kind(request: Request) -> dict[str, dict[str, dict[str, float]]]:
    """Per kind of query, what the bandit believes of each enabled RM now: its expected
    reward, confidence width and UCB at that kind's context (the one-hot alone). Empty when
    the context has no kinds (`featurizer.context = "projection"`)."""
    reranker: Reranker = request.app.state.reranker
    cfg = reranker.bandit.config
    if cfg.regions != len(KINDS):
        return {}
    return {k: reranker.bandit.predict(kind_context(k, cfg.dim, cfg.regions)) for k in KINDS}


def _cursor(text: str) -> tuple[float, str]:
    created, sep, decision_id = text.partition(":")
    try:
        if not sep or not decision_id:
            raise ValueError
        return float(created), decision_id
    except ValueError:
        raise BadRequestError(
            "before must be a cursor from a previous page's `next`", param="before"
        ) from None


def _summary(d: Decision, reward: float | None) -> DecisionSummary:
    return DecisionSummary(
        id=d.id,
        created=d.created,
        question=d.prompt[:300],
        task=d.task,
        has_document=d.has_document,
        reward_model=d.arm,
        selection=d.selection,
        kind=query_kind(d.prompt, d.has_document, d.task),
        drawn=d.drawn_arm,
        propensity=d.propensity,
        chosen=d.chosen,
        score=d.scores[d.chosen] if 0 <= d.chosen < len(d.scores) else None,
        model=d.model,
        feedback=reward,
    )


@router.get("/decisions")
async def list_decisions(
    request: Request,
    limit: int = Query(50, ge=1, le=500),
    before: str | None = None,
    reward_model: str | None = None,
    selection: str | None = None,
    feedback: Literal["yes", "no"] | None = None,
    task: str | None = None,
) -> DecisionPageResponse:
    reranker: Reranker = request.app.state.reranker
    page = DecisionPage(
        limit=limit,
        before=None if before is None else _cursor(before),
        arm=reward_model,
        selection=selection,
        feedback=None if feedback is None else feedback == "yes",
        task=task,
    )
    rows = await reranker.read(reranker.store.decisions(page))
    last = rows[-1][0] if len(rows) == limit else None
    return DecisionPageResponse(
        decisions=[_summary(d, r) for d, r in rows],
        next=None if last is None else f"{last.created!r}:{last.id}",
    )


@router.get("/decisions/{decision_id}")
async def get_decision(decision_id: str, request: Request) -> DecisionDetail:
    reranker: Reranker = request.app.state.reranker
    d = await reranker.read(reranker.store.get_decision(decision_id))
    if d is None:
        raise NotFoundError(f"no decision with id {decision_id!r}", param="id")
    reward = await reranker.read(reranker.store.decision_feedback(decision_id))
    obs = d.observed
    by_rm = dict(obs.scores) if obs is not None else {}
    by_rm.setdefault(d.arm, [s if s is not None else float("nan") for s in d.scores])
    texts: list[str | None] = [None] * len(d.scores)
    if d.candidates is not None:
        texts = list(d.candidates)
    candidates = [
        DecisionCandidate(
            text=text,
            chosen=j == d.chosen,
            scores={rm: float(s[j]) for rm, s in by_rm.items() if j < len(s)},
        )
        for j, text in enumerate(texts)
    ]
    return DecisionDetail(
        **_summary(d, reward).model_dump(exclude={"question"}),
        question=d.prompt,
        candidates=candidates,
        agree=[] if obs is None else obs.agree,
        abstain=[] if obs is None else obs.abstain,
        probabilities=d.probabilities,
        context=[float(v) for v in d.context],
        timings_ms={} if obs is None else obs.timings_ms,
    )
