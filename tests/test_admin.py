"""Admin routes and the API key, on the real embedded default over loopback HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import TEACHES, make_settings
from tests.test_serving import assert_error

KEY = {"Authorization": "Bearer admin-secret"}


def test_admin_needs_the_key_and_generate_does_not_by_default(
    start_server: Any, tmp_path: Any
) -> None:
    live = start_server(make_settings(tmp_path, api_key="admin-secret"))
    try:
        assert_error(httpx.get(live.url + "/admin/bandit"), 401)
        wrong = httpx.get(live.url + "/admin/bandit", headers={"Authorization": "Bearer nope"})
        assert assert_error(wrong, 401)["code"] == "invalid_api_key"
        assert httpx.get(live.url + "/admin/bandit", headers=KEY).status_code == 200
        ok = httpx.get(live.url + "/admin/bandit", headers={"X-API-Key": "admin-secret"})
        assert ok.status_code == 200
        gen = httpx.post(
            live.url + "/generate", json={"prompt": "Hi", "n": 1, "max_tokens": 2}, timeout=120
        )
        assert gen.status_code == 200
    finally:
        live.stop()


def test_generate_can_be_protected(start_server: Any, tmp_path: Any) -> None:
    live = start_server(make_settings(tmp_path, api_key="k", protect_generate=True))
    try:
        body = {"prompt": "Hi", "n": 1, "max_tokens": 2}
        assert_error(httpx.post(live.url + "/generate", json=body), 401)
        assert_error(httpx.post(live.url + "/v1/completions", json=body), 401)
        r = httpx.post(
            live.url + "/generate", json=body, timeout=120, headers={"Authorization": "Bearer k"}
        )
        assert r.status_code == 200
    finally:
        live.stop()


def test_rm_added_online_is_chosen_once_it_earns_it_and_survives_restart(
    start_server: Any, tmp_path: Any
) -> None:
    settings = make_settings(tmp_path, bandit={"epsilon": 0.0, "alpha": 0.3})
    live = start_server(settings)
    url = live.url
    try:
        new = {"name": "relevance_b", "kind": "relevance", "options": {"chunk_chars": 300}}
        r = httpx.post(url + "/admin/reward-models", json=new)
        assert r.status_code == 201 and r.json()["enabled"] is True
        assert_error(httpx.post(url + "/admin/reward-models", json=new), 409, "name")
        bad = httpx.post(url + "/admin/reward-models", json={"name": "x", "kind": "nope"})
        assert_error(bad, 422, "kind")
        assert_error(httpx.post(url + "/admin/reward-models/ghost/disable"), 404, "name")

        picks = []
        arms = list(httpx.get(url + "/admin/reward-models").json())
        warmup = settings.bandit.warmup
        for i in range(len(arms) * warmup + 10):
            gen = httpx.post(
                url + "/generate",
                timeout=120,
                json={
                    "prompt": f"What is {i} + {i + 3}?",
                    **TEACHES,
                    "max_tokens": 2,
                },
            ).json()
            picks.append(gen["reward_model"])
            reward = 1.0 if gen["reward_model"] == "relevance_b" else 0.0
            httpx.post(url + "/feedback", json={"id": gen["id"], "reward": reward})
        # The warm start tries the new RM early (the cheap RMs are observed on every
        # request, so their tries come as side observations); then the one that earned the
        # rewards is chosen.
        assert "relevance_b" in picks[: len(arms) * warmup], picks
        assert picks[-5:] == ["relevance_b"] * 5, picks

        assert httpx.post(url + "/admin/reward-models/relevance_b/disable").status_code == 200
        gen = httpx.post(
            url + "/generate",
            timeout=120,
            json={"prompt": "What is 2 + 5?", "n": 1, "max_tokens": 2},
        ).json()
        assert gen["reward_model"] != "relevance_b"
    finally:
        live.stop()
    again = start_server(settings)
    try:
        arms = httpx.get(again.url + "/admin/reward-models").json()
        assert arms["relevance_b"]["enabled"] is False and arms["relevance_b"]["updates"] >= 5
        assert httpx.post(again.url + "/admin/reward-models/relevance_b/enable").status_code == 200
    finally:
        again.stop()
