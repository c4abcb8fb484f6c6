"""laser.client: talk to a laser-server over HTTP. Needs httpx and pydantic only.

>>> from laser.client import Client
>>> # with Client("http://127.0.0.1:8000") as laser:
>>> #     best = laser.generate("What is 2 + 2?", n=4)
>>> #     laser.feedback(best.id, reward=1.0)
"""

from laser.client._client import AsyncClient, BaseClient, Client
from laser.client._exceptions import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectError,
    InternalServerError,
    LaserError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    TimeoutError,
    TransportError,
    UnprocessableEntityError,
)
from laser.client._types import Candidate, FeedbackResult, GenerateResult, Health, Usage

__all__ = [
    "APIStatusError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BaseClient",
    "Candidate",
    "Client",
    "ConflictError",
    "ConnectError",
    "FeedbackResult",
    "GenerateResult",
    "Health",
    "InternalServerError",
    "LaserError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "TimeoutError",
    "TransportError",
    "UnprocessableEntityError",
    "Usage",
]
