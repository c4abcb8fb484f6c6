"""The decision log over HTTP: `GET /admin/decisions` pages newest first with filters and a
cursor, `GET /admin/decisions/{id}` shows a decision whole (every candidate with every RM
score computed for it, the feedback); both need the API key. A real server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TEACHES, make_settings

SECRET = "decision-log-test-key-0123456789"
KEY = {"Authorization": f"Bearer {SECRET}"}


def test_decisions_are_paged_filtered_and_shown_whole(start_server: Any, tmp_path: Path) -> None:
    # Side observations on, so the cheap RMs' scores are logged for every decision.
    bandit = {"observe_ms_per_candidate": 5.0}
    live = start_server(make_settings(tmp_path, api_key=SECRET, bandit=bandit))
    try:
        with httpx.Client(base_url=live.url, timeout=120) as c:
            ids = []
            for i in range(5):
                body = {"prompt": f"What is {i} + 4?", **TEACHES, "max_tokens": 8}
                r = c.post("/generate", json=body)
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])
            assert c.post("/feedback", json={"id": ids[1], "reward": 1.0}, headers=KEY)
            # The key is required.
            assert c.get("/admin/decisions").status_code == 401
            assert c.get(f"/admin/decisions/{ids[0]}").status_code == 401
            page = c.get("/admin/decisions", params={"limit": 2}, headers=KEY).json()
            assert [d["id"] for d in page["decisions"]] == ids[::-1][:2]  # newest first
            rest = c.get(
                "/admin/decisions", params={"limit": 10, "before": page["next"]}, headers=KEY
            ).json()
            assert [d["id"] for d in rest["decisions"]] == ids[::-1][2:] and rest["next"] is None
            rated = c.get("/admin/decisions", params={"feedback": "yes"}, headers=KEY).json()
            assert [(d["id"], d["feedback"]) for d in rated["decisions"]] == [(ids[1], 1.0)]
            rm = page["decisions"][0]["reward_model"]
            by_rm = c.get("/admin/decisions", params={"reward_model": rm}, headers=KEY).json()
            assert by_rm["decisions"] and all(d["reward_model"] == rm for d in by_rm["decisions"])
            bad = c.get("/admin/decisions", params={"before": "nope"}, headers=KEY)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "before"
            assert c.get("/admin/decisions/ghost", headers=KEY).status_code == 404

            d = c.get(f"/admin/decisions/{ids[1]}", headers=KEY).json()
            assert d["feedback"] == 1.0 and d["question"].startswith("What is 1 + 4?")
            assert len(d["candidates"]) == 4 and sum(x["chosen"] for x in d["candidates"]) == 1
            chosen = next(x for x in d["candidates"] if x["chosen"])
            assert chosen["text"] and d["reward_model"] in chosen["scores"]
            # The cheap RMs scored every candidate too (side observations).
            assert len(chosen["scores"]) >= 3, chosen
            assert {"prepare", "generate", "score"} <= set(d["timings_ms"])
    finally:
        live.stop()
