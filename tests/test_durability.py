"""SIGKILL the real server process after acknowledged feedback: nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import MODEL_CACHE, free_port


def _start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LASER_CACHE_DIR": str(MODEL_CACHE), "LASER_ENGINE__MAX_MODEL_LEN": "1024"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "laser.server.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise AssertionError("server did not start in 300 s")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the engine core child goes too
    proc.wait(30)


def test_sigkill_after_acknowledged_feedback_loses_nothing(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path / "data", port, log)
    try:
        ids = []
        for i in range(4):
            r = httpx.post(
                url + "/generate",
                json={"prompt": f"What is {i} + 1?", "n": 2, "max_tokens": 4},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        for i, decision_id in enumerate(ids[:3]):
            fb = httpx.post(
                url + "/feedback", json={"id": decision_id, "reward": i / 2}, timeout=60
            )
            assert fb.status_code == 200, fb.text
        probe = {"prompt": "What is 7 + 1?"}
        before = httpx.post(url + "/bandit/predict", json=probe, timeout=60).json()
    finally:
        _kill(proc)  # no graceful shutdown: no final snapshot

    proc = _start(tmp_path / "data", port, log)
    try:
        health = httpx.get(url + "/health", timeout=60).json()
        assert health["counts"] == {"decisions": 4, "feedback": 3}
        assert httpx.post(url + "/bandit/predict", json=probe, timeout=60).json() == before
        # the fourth decision still takes feedback; the first ones refuse a second one
        assert httpx.post(url + "/feedback", json={"id": ids[3], "reward": 1}).status_code == 200
        assert httpx.post(url + "/feedback", json={"id": ids[0], "reward": 1}).status_code == 409
    finally:
        _kill(proc)
