"""Structured logs: `log_format = "json"` writes one JSON object per line, and the access
line of a /generate call carries its request id, route, status, RM and latency. A real
`laser-server serve` process on 127.0.0.1 (its stderr is what a log shipper reads)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import MODEL_CACHE, TEACHES, free_port


def test_json_log_lines_parse_and_carry_the_request_id(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "server.log"
    env = {
        **os.environ,
        "LASER_CACHE_DIR": str(MODEL_CACHE),
        "LASER_ENGINE__MAX_MODEL_LEN": "1024",
        "LASER_LOG_FORMAT": "json",
    }
    cmd = [sys.executable, "-m", "laser.server.cli", "serve", "--data-dir", str(tmp_path)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        body = {"prompt": "What is 3 + 4?", **TEACHES, "max_tokens": 8}
        r = httpx.post(url + "/generate", json=body, headers={"X-Request-Id": "log-1"}, timeout=120)
        assert r.status_code == 200, r.text
        rm = r.json()["reward_model"]
        assert httpx.post(url + "/generate", json={"prompt": ""}, timeout=60).status_code == 422
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    lines = [x for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
    records = []
    for x in lines:
        if x.startswith("{"):
            records.append(json.loads(x))
    # Every line of ours is JSON (a progress bar or a library printing on its own may not be).
    ours = [x for x in lines if "laser" in x]
    assert ours and all(x.startswith("{") for x in ours), [x for x in ours if x[0] != "{"][:3]
    access = [r for r in records if r["logger"] == "laser.access"]
    gen = [r for r in access if r.get("request_id") == "log-1"]
    assert len(gen) == 1, access
    assert gen[0]["route"] == "/generate" and gen[0]["status"] == 200 and gen[0]["rm"] == rm
    assert gen[0]["latency_ms"] > 0 and gen[0]["level"] == "INFO" and gen[0]["time"].endswith("Z")
    assert any(r["status"] == 422 for r in access)
