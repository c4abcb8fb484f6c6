"""The client's exception tree.

    LaserError
     ├── TransportError                 the request did not get an HTTP answer
     │    ├── ConnectError              could not connect
     │    └── TimeoutError              connected, but no answer in time
     └── APIStatusError                 the server answered with a non-2xx status
          ├── BadRequestError           400
          ├── AuthenticationError       401
          ├── PermissionDeniedError     403
          ├── NotFoundError             404
          ├── ConflictError             409
          ├── RequestTooLargeError      413
          ├── UnprocessableEntityError  422
          ├── RateLimitError            429
          ├── InternalServerError       500 and other 5xx
          └── ServiceUnavailableError   503

`APIStatusError` carries `status_code`, the server's `message`, `type`, `param`, `code`, and
the `response`. Lower errors are translated with `raise ... from exc`.
"""

from __future__ import annotations

from typing import Any

import httpx


class LaserError(Exception):
    """Base class of every error the client raises."""


class TransportError(LaserError):
    pass


class ConnectError(TransportError):
    pass


class TimeoutError(TransportError):
    pass


class APIStatusError(LaserError):
    status_code: int = 0

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        detail: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                detail = body["error"]
        except ValueError:
            pass
        self.message: str = str(
            detail.get("message") or response.text[:500] or response.reason_phrase
        )
        self.type: str | None = detail.get("type")
        self.param: str | None = detail.get("param")
        self.code: str | None = detail.get("code")
        super().__init__(f"{self.status_code}: {self.message}")


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    """403: e.g. a model or adapter folder outside the server's allowed roots."""


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class RequestTooLargeError(APIStatusError):
    """413: the request body is over the server's `max_body_bytes`."""


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


class ServiceUnavailableError(InternalServerError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def status_error(response: httpx.Response) -> APIStatusError:
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    return cls(response)
