"""laser.client against httpx's MockTransport (every error mapping, retries), and end to
end against the real server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

import laser.client as lc
from laser.client import AsyncClient, Client
from laser.server.config import default_reward_models

DEFAULT_RMS = {spec.name for spec in default_reward_models()}

OK_GENERATE = {
    "id": "gen-1",
    "text": "4",
    "reward_model": "agreement",
    "score": 1.0,
    "index": 0,
    "propensity": 1.0,
    "selection": "bandit",
    "model": "m",
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    "timings_ms": {"total": 1.0},
    "new_server_field": True,
}


def err(
    status: int,
    message: str = "nope",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    body = {"error": {"message": message, "type": "t", "param": param, "code": "c"}}
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, lc.BadRequestError),
        (401, lc.AuthenticationError),
        (403, lc.PermissionDeniedError),
        (404, lc.NotFoundError),
        (409, lc.ConflictError),
        (413, lc.RequestTooLargeError),
        (422, lc.UnprocessableEntityError),
        (429, lc.RateLimitError),
        (500, lc.InternalServerError),
        (502, lc.InternalServerError),
        (503, lc.ServiceUnavailableError),
        (418, lc.APIStatusError),
    ],
)
def test_status_errors_map_to_classes(status: int, cls: type[lc.APIStatusError]) -> None:
    transport = httpx.MockTransport(lambda req: err(status, "bad thing", "n"))
    with Client(transport=transport, max_retries=0) as c, pytest.raises(cls) as info:
        c.generate("hi")
    e = info.value
    assert isinstance(e, lc.LaserError) and isinstance(e, lc.APIStatusError)
    assert (e.status_code, e.message, e.param, e.code) == (status, "bad thing", "n", "c")


def test_non_json_error_body_still_maps() -> None:
    transport = httpx.MockTransport(lambda req: httpx.Response(502, text="bad gateway"))
    with (
        Client(transport=transport, max_retries=0) as c,
        pytest.raises(lc.InternalServerError) as info,
    ):
        c.health()
    assert info.value.message == "bad gateway"


def test_transport_errors_map_and_only_connect_errors_retry() -> None:
    calls = {"n": 0}

    def refuse(req: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        raise httpx.ConnectError("refused", request=req)

    client = Client(transport=httpx.MockTransport(refuse), max_retries=2, backoff=0.0)
    with client as c, pytest.raises(lc.ConnectError):
        c.health()
    assert calls["n"] == 3  # first try + 2 retries

    calls["n"] = 0

    def slow(req: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        raise httpx.ReadTimeout("slow", request=req)

    client = Client(transport=httpx.MockTransport(slow), max_retries=2)
    with client as c, pytest.raises(lc.TimeoutError) as info:
        c.generate("hi")
    assert isinstance(info.value, lc.TransportError)
    assert calls["n"] == 1  # a POST the server may have seen is never replayed


def test_retries_on_429_and_503_then_succeeds() -> None:
    replies = [
        err(429, headers={"retry-after": "0"}),
        err(503, headers={"retry-after": "0"}),
        httpx.Response(200, json=OK_GENERATE),
    ]
    seen: list[dict[str, Any]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(json.loads(req.content))
        return replies.pop(0)

    with Client(transport=httpx.MockTransport(handler), max_retries=2) as c:
        result = c.generate("What is 2+2?", n=4, document=None, reward_model="agreement")
    assert result.text == "4" and result.usage.total_tokens == 4
    assert seen == [{"prompt": "What is 2+2?", "n": 4, "reward_model": "agreement"}] * 3


def test_gives_up_after_max_retries() -> None:
    transport = httpx.MockTransport(lambda req: err(503, headers={"retry-after": "0"}))
    with Client(transport=transport, max_retries=1) as c, pytest.raises(lc.ServiceUnavailableError):
        c.feedback("x", 1.0)


def test_retry_after_is_honoured_and_capped() -> None:
    c = lc.BaseClient("http://x", max_retries=3, backoff=0.5, max_backoff=10)
    resp = lambda h: httpx.Response(503, headers=h)  # noqa: E731
    assert c._retry_delay(0, resp({"retry-after": "2"})) == 2.0
    assert c._retry_delay(0, resp({"retry-after": "999"})) == 10.0
    assert c._retry_delay(2, resp({})) == 2.0  # exponential: 0.5 * 2**2
    assert c._retry_delay(3, resp({})) is None  # out of retries
    assert c._retry_delay(0, httpx.Response(400)) is None  # not retryable


def test_headers_carry_api_key_and_request_id() -> None:
    seen: list[httpx.Headers] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers)
        return httpx.Response(200, json=OK_GENERATE)

    with Client(transport=httpx.MockTransport(handler), api_key="sekrit") as c:
        c.generate("hi", request_id="my-id")
    assert seen[0]["authorization"] == "Bearer sekrit" and seen[0]["x-request-id"] == "my-id"


def test_async_client_maps_errors_and_parses() -> None:
    replies = [
        err(429, headers={"retry-after": "0"}),
        httpx.Response(200, json=OK_GENERATE),
        err(404, "no decision", "id"),
    ]

    async def run() -> None:
        transport = httpx.MockTransport(lambda req: replies.pop(0))
        async with AsyncClient(transport=transport, max_retries=1) as c:
            result = await c.generate("hi")
            assert result.reward_model == "agreement"
            with pytest.raises(lc.NotFoundError):
                await c.feedback("zzz", 1.0)

    asyncio.run(run())


def test_end_to_end_against_the_real_server(server: Any) -> None:
    with Client(server.url) as c:
        result = c.generate("What is 3 + 5?", n=2, max_tokens=8, return_candidates=True)
        assert result.candidates is not None and len(result.candidates) == 2
        fb = c.feedback(result.id, True)
        assert fb.applied and fb.reward == 1.0
        with pytest.raises(lc.ConflictError):
            c.feedback(result.id, 0.0)
        with pytest.raises(lc.UnprocessableEntityError) as info:
            c.feedback(result.id, 2.0)
        assert info.value.param == "reward"
        assert set(c.reward_models()) == DEFAULT_RMS

    async def run() -> None:
        async with AsyncClient(server.url) as ac:
            results = await asyncio.gather(
                *(ac.generate(f"Say {w}.", n=1, max_tokens=4) for w in ("yes", "no", "maybe"))
            )
            assert len({r.id for r in results}) == 3

    asyncio.run(run())


def test_admin_calls_send_the_key_and_map_401(start_server: Any, tmp_path: Any) -> None:
    from tests.conftest import make_settings

    live = start_server(make_settings(tmp_path, api_key="k"))
    try:
        with Client(live.url) as anon, pytest.raises(lc.AuthenticationError):
            anon.admin_bandit()
        with Client(live.url, api_key="k") as admin:
            added = admin.add_reward_model("agree2", "agreement", use_reference=False)
            assert added["enabled"] is True
            assert admin.disable_reward_model("agree2")["enabled"] is False
            assert admin.enable_reward_model("agree2")["enabled"] is True
            assert "agree2" in admin.admin_bandit()["arms"]
            assert admin.snapshot()["snapshot"] is True
            with pytest.raises(lc.ConflictError):
                admin.add_reward_model("agree2", "agreement")
    finally:
        live.stop()
