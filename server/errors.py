"""API errors: one JSON shape for every non-2xx answer.

APIError(status, message, type, param, code)
 ├── BadRequestError        400 invalid_request_error
 ├── UnauthorizedError      401 authentication_error
 ├── ForbiddenError         403 permission_error
 ├── NotFoundError          404 not_found_error
 ├── ConflictError          409 conflict_error
 ├── TooManyRequestsError   429 rate_limit_error (with Retry-After: the queue is full)
 └── ServiceUnavailableError 503 service_unavailable (with Retry-After)
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status = 500
    type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BadRequestError(APIError):
    status = 400
    type = "invalid_request_error"


class UnauthorizedError(APIError):
    status = 401
    type = "authentication_error"


class ForbiddenError(APIError):
    status = 403
    type = "permission_error"


class NotFoundError(APIError):
    status = 404
    type = "not_found_error"


class ConflictError(APIError):
    status = 409
    type = "conflict_error"


class UnprocessableError(APIError):
    """A well-formed request whose values cannot be used (as pydantic's 422s)."""

    status = 422
    type = "invalid_request_error"


class TooManyRequestsError(APIError):
    status = 429
    type = "rate_limit_error"


class ServiceUnavailableError(APIError):
    status = 503
    type = "service_unavailable"
