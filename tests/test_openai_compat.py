"""The official `openai` package, unchanged, against the running server."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

MODEL = "SmolLM2-135M-Instruct"


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
    assert laser["id"] == "sdk-chat-1" and laser["selection"] in ("bandit", "abstain")
    fb = httpx.post(server.url + "/feedback", json={"id": "sdk-chat-1", "reward": 1.0})
    assert fb.status_code == 200


def test_chat_stream_with_the_sdk(server: Any) -> None:
    stream = sdk(server).chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text and finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    laser = [c.model_extra["laser"] for c in chunks if (c.model_extra or {}).get("laser")]
    assert len(laser) == 1 and laser[0]["id"] == chunks[0].id  # feedback still works


def test_completion_stream_with_n_choices(server: Any) -> None:
    stream = sdk(server).completions.create(
        model="SmolLM2-135M-Instruct", prompt="1, 2, 3,", n=2, max_tokens=4, stream=True
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1} and all(texts.values())


def test_model_names_choose_the_policy_and_unknown_is_404(server: Any) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk(server).completions.create(model="gpt-4o", prompt="x", max_tokens=2)
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
    # No model: the live policy (the base model here), named in the answer.
    r = httpx.post(
        server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=120
    )
    assert r.status_code == 200 and r.json()["model"] == "SmolLM2-135M-Instruct"


def test_sdk_sees_validation_errors(server: Any) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk(server).completions.create(model=MODEL, prompt="x", n=3, best_of=2)
    with pytest.raises(openai.UnprocessableEntityError):
        sdk(server).completions.create(model=MODEL, prompt="x", temperature=9)
