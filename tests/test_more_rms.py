"""The LM judge RM and the remote JSON RM on a live server; multi-document QA."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from tests.conftest import make_settings, reply_json


class LengthRMHandler(BaseHTTPRequestHandler):
    """A real remote RM speaking the plain JSON protocol: longer answers score higher.
    The first request of each run fails with 503 to exercise the retry."""

    calls = 0
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).calls += 1
        type(self).seen.append(body)
        if type(self).calls == 1:
            self.send_response(503)
            self.end_headers()
            return
        reply_json(self, {"scores": [float(len(r)) for r in body["responses"]]})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def remote_rm_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), LengthRMHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/score"
    httpd.shutdown()


def test_judge_remote_and_multidoc(start_server: Any, tmp_path: Any, remote_rm_url: str) -> None:
    rms = [
        {"name": "judge", "kind": "judge"},
        {"name": "lengthy", "kind": "remote", "options": {"url": remote_rm_url, "timeout": 10}},
        {"name": "agreement", "kind": "agreement"},
    ]
    live = start_server(make_settings(tmp_path, reward_models=rms))
    try:
        docs = ["Alice founded the bakery in 1990.", "The bakery moved to Paris in 2001."]
        body = {
            "prompt": "Where did the bakery that Alice founded move?",
            "documents": docs,
            "n": 3,
            "max_tokens": 12,
            "return_candidates": True,
        }
        r = httpx.post(
            live.url + "/generate", json={**body, "reward_model": "lengthy"}, timeout=120
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["reward_model"] == "lengthy" and out["selection"] == "forced"
        scores = [c["score"] for c in out["candidates"]]
        assert scores == [float(len(c["text"])) for c in out["candidates"]]
        assert LengthRMHandler.calls == 2  # one 503, retried once
        sent = LengthRMHandler.seen[-1]
        assert sent["documents"] == docs and len(sent["responses"]) == 3
        assert "Document 2:\nThe bakery moved to Paris" in sent["prompt"]  # multi-doc template

        r = httpx.post(live.url + "/generate", json={**body, "reward_model": "judge"}, timeout=120)
        assert r.status_code == 200, r.text
        judged = r.json()
        assert judged["reward_model"] == "judge"
        # log p(Yes) - log p(No): finite, and not all equal across different candidates
        assert all(abs(c["score"]) < 100 for c in judged["candidates"])
    finally:
        live.stop()
