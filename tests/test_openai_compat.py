"""The official `openai` package, unchanged, against the running server."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest


def sdk(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models(server: Any) -> None:
    models = sdk(server).models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct"]


def test_completions_best_of_reranked_with_laser_extras(server: Any) -> None:
    resp = sdk(server).completions.create(
        model="SmolLM2-135M-Instruct",
        prompt="The capital of France is",
        n=2,
        best_of=4,
        max_tokens=6,
        extra_body={"reward_model": "relevance"},
    )
    assert len(resp.choices) == 2 and resp.object == "text_completion"
    laser = resp.model_extra["laser"]  # type: ignore[index]
    assert laser["reward_model"] == "relevance" and len(laser["scores"]) == 4
    # choices come back reranked: candidate indices in non-increasing score order, best first
    order = laser["choice_indices"]
    assert sorted(order) == [0, 1, 2, 3] and order[0] == laser["chosen_index"]
    ranked = [laser["scores"][i] for i in order]
    assert ranked == sorted(laser["scores"], reverse=True)
    assert resp.usage is not None and resp.usage.completion_tokens > 0


def test_chat_completions_and_feedback_by_laser_id(server: Any) -> None:
    resp = sdk(server).chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Say hi."}],
        n=1,
        max_tokens=6,
        extra_headers={"X-Request-Id": "sdk-chat-1"},
    )
    assert resp.id == "sdk-chat-1" and resp.choices[0].message.role == "assistant"
    laser = resp.model_extra["laser"]  # type: ignore[index]
    assert laser["id"] == "sdk-chat-1" and laser["selection"] == "bandit"
    fb = httpx.post(server.url + "/feedback", json={"id": "sdk-chat-1", "reward": 1.0})
    assert fb.status_code == 200


def test_stream_is_refused_with_a_clear_400(server: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert "stream" in str(info.value)


def test_sdk_sees_validation_errors(server: Any) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk(server).completions.create(model="m", prompt="x", n=3, best_of=2)
    with pytest.raises(openai.UnprocessableEntityError):
        sdk(server).completions.create(model="m", prompt="x", temperature=9)
