"""`Client` and `AsyncClient`. `BaseClient` builds requests, parses replies and decides
retries; the two subclasses only add I/O (as httpx does).

    with Client("http://127.0.0.1:8000") as laser:
        result = laser.generate("What is 2 + 2?", n=4)
        laser.feedback(result.id, 1.0)
"""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from laser.client._exceptions import (
    ConnectError,
    TimeoutError,
    TransportError,
    status_error,
)
from laser.client._types import FeedbackResult, GenerateResult, Health

M = TypeVar("M", bound=BaseModel)
RETRY_STATUSES = frozenset({429, 503})


class BaseClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    def _headers(self, request_id: str | None = None) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        if request_id:
            headers["x-request-id"] = request_id
        return headers

    @staticmethod
    def _generate_body(prompt: str | None, **fields: Any) -> dict[str, Any]:
        body = {k: v for k, v in fields.items() if v is not None}
        if prompt is not None:
            body["prompt"] = prompt
        return body

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retry number `attempt` (0-based), or None: do not retry."""
        if attempt >= self.max_retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            after = response.headers.get("retry-after")
            if after:
                try:
                    return min(float(after), float(self.max_backoff))
                except ValueError:
                    try:
                        when = parsedate_to_datetime(after).timestamp()
                        return min(max(0.0, when - time.time()), self.max_backoff)
                    except (TypeError, ValueError):
                        pass
        return float(min(self.backoff * 2**attempt, self.max_backoff))

    @staticmethod
    def _parse(response: httpx.Response, model: type[M] | None) -> Any:
        if response.is_success:
            data = response.json()
            return model.model_validate(data) if model is not None else data
        raise status_error(response)


def _transport_error(exc: httpx.TransportError) -> TransportError:
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError(f"timed out: {exc}")
    if isinstance(exc, httpx.ConnectError):
        return ConnectError(f"could not connect: {exc}")
    return TransportError(str(exc))


class Client(BaseClient):
    """Synchronous client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        transport: httpx.BaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, **kwargs)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        model: type[M] | None = None,
        *,
        json: Any = None,
        request_id: str | None = None,
    ) -> Any:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, path, json=json, headers=self._headers(request_id)
                )
            except httpx.TransportError as exc:
                # Only failures to connect are retried: the server never saw the request.
                delay = (
                    self._retry_delay(attempt, None)
                    if isinstance(exc, httpx.ConnectError)
                    else None
                )
                if delay is None:
                    raise _transport_error(exc) from exc
            else:
                delay = self._retry_delay(attempt, response)
                if delay is None:
                    return self._parse(response, model)
            time.sleep(delay)
            attempt += 1

    def generate(
        self, prompt: str | None = None, *, request_id: str | None = None, **fields: Any
    ) -> GenerateResult:
        """Best-of-n: see the README's table for `fields` (n, document, reward_model, ...)."""
        body = self._generate_body(prompt, **fields)
        result: GenerateResult = self._request(
            "POST", "/generate", GenerateResult, json=body, request_id=request_id
        )
        return result

    def feedback(self, id: str, reward: float | bool) -> FeedbackResult:
        result: FeedbackResult = self._request(
            "POST", "/feedback", FeedbackResult, json={"id": id, "reward": reward}
        )
        return result

    def health(self) -> Health:
        result: Health = self._request("GET", "/health", Health)
        return result

    def reward_models(self) -> dict[str, dict[str, Any]]:
        return dict(self.health().reward_models)

    def bandit(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/bandit")
        return result

    def predict(self, prompt: str, document: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._request(
            "POST", "/bandit/predict", json=self._generate_body(prompt, document=document)
        )
        return result

    # -- admin (needs the API key when the server has one) --------------------------------
    def add_reward_model(self, name: str, kind: str, **options: Any) -> dict[str, Any]:
        """Add an RM while serving (a new bandit arm)."""
        body = {"name": name, "kind": kind, "options": options}
        result: dict[str, Any] = self._request("POST", "/admin/reward-models", json=body)
        return result

    def disable_reward_model(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", f"/admin/reward-models/{name}/disable")
        return result

    def enable_reward_model(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", f"/admin/reward-models/{name}/enable")
        return result

    def admin_bandit(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/admin/bandit")
        return result

    def snapshot(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/admin/bandit/snapshot")
        return result


class AsyncClient(BaseClient):
    """Asynchronous client with the same methods as `Client`, awaited."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, **kwargs)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        model: type[M] | None = None,
        *,
        json: Any = None,
        request_id: str | None = None,
    ) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, path, json=json, headers=self._headers(request_id)
                )
            except httpx.TransportError as exc:
                delay = (
                    self._retry_delay(attempt, None)
                    if isinstance(exc, httpx.ConnectError)
                    else None
                )
                if delay is None:
                    raise _transport_error(exc) from exc
            else:
                delay = self._retry_delay(attempt, response)
                if delay is None:
                    return self._parse(response, model)
            await asyncio.sleep(delay)
            attempt += 1

    async def generate(
        self, prompt: str | None = None, *, request_id: str | None = None, **fields: Any
    ) -> GenerateResult:
        body = self._generate_body(prompt, **fields)
        result: GenerateResult = await self._request(
            "POST", "/generate", GenerateResult, json=body, request_id=request_id
        )
        return result

    async def feedback(self, id: str, reward: float | bool) -> FeedbackResult:
        result: FeedbackResult = await self._request(
            "POST", "/feedback", FeedbackResult, json={"id": id, "reward": reward}
        )
        return result

    async def health(self) -> Health:
        result: Health = await self._request("GET", "/health", Health)
        return result

    async def reward_models(self) -> dict[str, dict[str, Any]]:
        return dict((await self.health()).reward_models)

    async def bandit(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/bandit")
        return result

    async def predict(self, prompt: str, document: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", "/bandit/predict", json=self._generate_body(prompt, document=document)
        )
        return result

    # -- admin (needs the API key when the server has one) --------------------------------
    async def add_reward_model(self, name: str, kind: str, **options: Any) -> dict[str, Any]:
        """Add an RM while serving (a new bandit arm)."""
        body = {"name": name, "kind": kind, "options": options}
        result: dict[str, Any] = await self._request("POST", "/admin/reward-models", json=body)
        return result

    async def disable_reward_model(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", f"/admin/reward-models/{name}/disable")
        return result

    async def enable_reward_model(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", f"/admin/reward-models/{name}/enable")
        return result

    async def admin_bandit(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/admin/bandit")
        return result

    async def snapshot(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", "/admin/bandit/snapshot")
        return result
