"""The one generation handler behind every generation route (`/generate`,
`/v1/completions`, `/v1/chat/completions`): the request id, the input limits, a place in
admission, then the reranker's run."""

from __future__ import annotations

import sqlite3
import uuid

from fastapi import Request

from laser.server import logs
from laser.server.errors import BadRequestError, ConflictError
from laser.server.limits import check_input_size
from laser.server.protocol import GenerateRequest, GenerateResponse
from laser.server.reranker import Reranker


async def run_generate(request: Request, req: GenerateRequest, prefix: str) -> GenerateResponse:
    """Shared by every generation route: the id (`X-Request-Id` or a new one), then the run."""
    reranker: Reranker = request.app.state.reranker
    given = request.headers.get("x-request-id")
    if given is not None and len(given) > 128:
        raise BadRequestError("X-Request-Id is longer than 128 characters", param="X-Request-Id")
    request_id = given or f"{prefix}-{uuid.uuid4().hex}"
    logs.note(request_id=request_id)
    check_input_size(req, reranker.settings)
    # Back-pressure: a bounded number run, a bounded number wait, the rest get 429 at once.
    async with request.app.state.admission.slot():
        try:
            # Ids the caller chose are checked before any work; ours are fresh uuid4s.
            return await reranker.generate(req, request_id, check_id=given is not None)
        except sqlite3.IntegrityError:  # the same id raced in twice: the first one stands
            raise ConflictError(f"request id {request_id!r} was used already", param="id") from None
