"""API-key checks as FastAPI dependencies. The key is the app's `settings.api_key`. When one
is set, everything that changes or reveals the server's state needs it (admin, training,
policy, feedback, the bandit routes: `require_admin`); generation (`/generate`, `/v1/*`)
needs it when `protect_generate` is on (`require_user`). `/health` and `/metrics` stay open
for load balancers and scrapers; with a key set, `/health` shows the learnt state (per-RM
feedback, selections, errors, store counts, fault details) only to requests that carry it."""

from __future__ import annotations

import hmac

from fastapi import Request

from laser.server.config import Settings
from laser.server.errors import UnauthorizedError


def has_key(request: Request) -> bool:
    """Whether the request carries the server's API key (`Authorization: Bearer <key>` or
    `X-API-Key: <key>`, compared in constant time); True when no key is configured."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return True
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    # Settings refuse an empty key, so an absent header can never match.
    return hmac.compare_digest(given.encode(), settings.api_key.get_secret_value().encode())


def check_key(request: Request) -> None:
    """A 401 unless the request carries the API key (see `has_key`)."""
    if not has_key(request):
        raise UnauthorizedError(
            "missing or wrong API key",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


# async: FastAPI runs plain-def dependencies in a worker thread, a thread hop per request
# that costs milliseconds on a busy machine.
async def require_admin(request: Request) -> None:
    check_key(request)


async def require_user(request: Request) -> None:
    if request.app.state.settings.protect_generate:
        check_key(request)
