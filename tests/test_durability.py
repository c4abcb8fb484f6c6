"""SIGKILL the real server process after acknowledged feedback: nothing is lost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from laser.bandit import LinUCB, LinUCBConfig
from tests.conftest import MODEL_CACHE, TEACHES, free_port


def _start(
    data_dir: Path, port: int, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LASER_CACHE_DIR": str(MODEL_CACHE), "LASER_ENGINE__MAX_MODEL_LEN": "1024"}
    env.update(extra_env or {})
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
    with contextlib.suppress(ProcessLookupError):  # already gone after a graceful stop
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


def _feedback_rows(db: Path) -> list[tuple[int, str, float, str, bytes, str | None]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute(
            "SELECT f.seq, f.decision_id, f.reward, d.arm, d.context, d.observed FROM feedback f "
            "JOIN decisions d ON d.id = f.decision_id ORDER BY f.seq"
        ).fetchall()


def test_sigkill_under_concurrent_feedback_then_sigterm_drains(tmp_path: Path) -> None:
    """Four clients stream feedback; SIGKILL mid-stream. After the restart every acknowledged
    feedback is in SQLite and /bandit/predict equals a LinUCB replay of the SQLite log done
    here, independently. Then SIGTERM with a generation in flight: it gets its 200, a final
    snapshot is written, the process exits 0."""
    port, log, data = free_port(), tmp_path / "server.log", tmp_path / "data"
    url = f"http://127.0.0.1:{port}"
    env = {"LASER_BANDIT__SNAPSHOT_EVERY": "7"}  # restore = a snapshot + a replay after it
    proc = _start(data, port, log, env)
    acked: list[tuple[str, float]] = []
    try:
        with ThreadPoolExecutor(4) as pool:
            gens = pool.map(
                lambda i: httpx.post(
                    url + "/generate",
                    json={"prompt": f"What is {i} + {i % 7}?", **TEACHES, "max_tokens": 2},
                    timeout=300,
                ),
                range(48),
            )
            ids = [r.json()["id"] for r in gens]
        stop = threading.Event()

        def client(part: list[str]) -> None:
            with httpx.Client(timeout=30) as c:
                for k, decision_id in enumerate(part):
                    if stop.is_set():
                        return
                    reward = (k % 5) / 4
                    try:
                        r = c.post(url + "/feedback", json={"id": decision_id, "reward": reward})
                    except httpx.HTTPError:
                        return  # the server died under this request: not acknowledged
                    if r.status_code == 200:
                        acked.append((decision_id, reward))
                    time.sleep(0.01)  # a steady stream rather than one burst

        threads = [threading.Thread(target=client, args=(ids[j::4],)) for j in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 16 and time.monotonic() < deadline:
            time.sleep(0.005)
        _kill(proc)  # mid-stream, no graceful shutdown
        stop.set()
        for t in threads:
            t.join(60)
        assert len(acked) >= 16
    finally:
        _kill(proc)

    proc = _start(data, port, log, env)
    try:
        rows = _feedback_rows(data / "laser.db")
        stored = {r[1]: r[2] for r in rows}
        assert all(stored.get(i) == reward for i, reward in acked), "an acknowledged one is lost"
        summary = httpx.get(url + "/admin/bandit", timeout=60).json()
        cfg = summary["config"]
        replay = LinUCB(
            LinUCBConfig(
                dim=cfg["dim"], alpha=cfg["alpha"], ridge=cfg["ridge"], epsilon=cfg["epsilon"]
            ),
            list(summary["arms"]),
        )
        # Each feedback updates the RM that chose and, from the logged observations, every RM
        # whose pick agreed (same reward) or that abstained (0): observe.credits.
        updates: dict[str, int] = {}
        for _, _, reward, arm, context, observed in rows:
            obs = json.loads(observed) if observed else {"agree": [], "abstain": []}
            for name, r in [
                (arm, reward),
                *((a, reward) for a in obs["agree"]),
                *((a, 0.0) for a in obs["abstain"]),
            ]:
                replay.update(name, np.frombuffer(context), r)
                updates[name] = updates.get(name, 0) + 1
        for arm, stats in summary["arms"].items():
            assert stats["updates"] == updates.get(arm, 0)
        # The probe is a stored question, so its context is the stored vector.
        with sqlite3.connect(f"file:{data / 'laser.db'}?mode=ro", uri=True) as con:
            prompt, context = con.execute(
                "SELECT prompt, context FROM decisions ORDER BY created LIMIT 1"
            ).fetchone()
        served = httpx.post(url + "/bandit/predict", json={"prompt": prompt}, timeout=60).json()
        expected = replay.predict(np.frombuffer(context))
        assert served["arms"].keys() == expected.keys()
        for arm, values in expected.items():
            for key, value in values.items():
                assert served["arms"][arm][key] == pytest.approx(value, rel=1e-6, abs=1e-9)

        # Graceful stop: a generation in flight when SIGTERM arrives still gets its answer.
        with ThreadPoolExecutor(1) as pool:
            body = {"prompt": "Count from 1 to 300, separated by commas.", "n": 4}
            slow = pool.submit(
                httpx.post, url + "/generate", json={**body, "max_tokens": 256}, timeout=300
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if httpx.get(url + "/health", timeout=60).json()["admission"]["active"] == 1:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)  # to the server process only, as systemd does
            reply = slow.result(300)
        assert reply.status_code == 200, reply.text
        assert proc.wait(120) == 0
        assert "Waiting for connections to close" in log.read_text()  # it was in flight
        with sqlite3.connect(f"file:{data / 'laser.db'}?mode=ro", uri=True) as con:
            last_seq = con.execute("SELECT MAX(seq) FROM feedback").fetchone()[0]
            snap = con.execute(
                "SELECT feedback_seq FROM snapshots ORDER BY seq DESC LIMIT 1"
            ).fetchone()[0]
            answered = con.execute(
                "SELECT COUNT(*) FROM decisions WHERE id = ?", (reply.json()["id"],)
            ).fetchone()[0]
        assert snap == last_seq and answered == 1
    finally:
        _kill(proc)
