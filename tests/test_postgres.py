"""Replicas sharing one bandit and one log on a REAL PostgreSQL server, started by the test run
(Debian's postgresql binaries, a private port and data folder under /tmp, stopped at the
end). Replicas are real laser-server apps on 127.0.0.1 ports: in this process (sharing the
loaded engine), and one as its own process that is killed with SIGKILL under feedback load."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from laser.server.cli import main as cli_main
from laser.server.ope import read_log
from tests.conftest import MODEL_CACHE, ROOT, TEACHES, LiveServer, free_port, make_settings
from tests.pg_local import LocalPostgres, private_root

RMS = [
    {"name": "arith", "kind": "arith"},
    {"name": "agreement", "kind": "agreement"},
    {"name": "relevance", "kind": "relevance"},
]
PROMPTS = ["What is 4 + 9?", "Who wrote the letter?", "Name a colour.", "What is 7 * 6?"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    root = private_root()
    pg = LocalPostgres(root)
    pg.start()
    yield pg
    pg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: LocalPostgres) -> str:
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


def replica_settings(tmp: Path, url: str, **extra: Any) -> Any:
    return make_settings(
        tmp,
        store={"url": url, "poll_interval_s": 0.05},
        reward_models=RMS,
        # Side observations on: replicas must apply them alike.
        bandit={"epsilon": 0.2, "warmup": 1, "snapshot_every": 5, "observe_ms_per_candidate": 5.0},
        **extra,
    )


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0) -> float:
    """Seconds until `check()` holds (bounded); fails the test past `timeout_s`."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout_s, "replicas did not converge in time"
        time.sleep(0.02)
    return time.monotonic() - t0


def predictions(url: str) -> list[Any]:
    return [
        httpx.post(url + "/bandit/predict", json={"prompt": p}, timeout=30).json() for p in PROMPTS
    ]


def seq(url: str) -> int:
    return int(httpx.get(url + "/bandit", timeout=30).json()["feedback_seq"])


def test_db_upgrade_command(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    cli_main(["db", "status", "--url", pg_url])
    cli_main(["db", "upgrade", "--url", pg_url])
    cli_main(["db", "upgrade", "--url", pg_url])
    cli_main(["db", "status", "--url", pg_url])
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "schema 0; this laser-server uses 2",
        "schema 0 -> 2",
        "schema 2: up to date",
        "schema 2; this laser-server uses 2",
    ]


def test_replicas_learn_as_one(
    start_server: Callable[..., LiveServer], tmp_path: Path, pg_url: str
) -> None:
    a = start_server(replica_settings(tmp_path / "a", pg_url))
    b = start_server(replica_settings(tmp_path / "b", pg_url))
    c = None
    try:
        ids = []
        for i in range(12):
            r = httpx.post(
                a.url + "/generate",
                json={"prompt": PROMPTS[i % 4], **TEACHES, "max_tokens": 4},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        # Feedback for A's decisions lands on B (and the reverse is refused: first one stands).
        last = 0
        for i, decision_id in enumerate(ids):
            fb = httpx.post(b.url + "/feedback", json={"id": decision_id, "reward": i % 3 / 2})
            assert fb.status_code == 200 and fb.json()["applied"] is True, fb.text
            last = fb.json()["seq"]
        again = httpx.post(a.url + "/feedback", json={"id": ids[0], "reward": 1.0})
        assert again.status_code == 409
        unknown = httpx.post(a.url + "/feedback", json={"id": "nope", "reward": 1.0})
        assert unknown.status_code == 404
        # Within a bounded delay A has applied all of it, and both predict the same.
        wait_for(lambda: seq(a.url) == seq(b.url) == last)
        assert predictions(a.url) == predictions(b.url)
        # Side observations (RMs that agreed or abstained) are applied on both replicas alike.
        updates = [
            {n: x["updates"] for n, x in httpx.get(u + "/admin/reward-models").json().items()}
            for u in (a.url, b.url)
        ]
        assert updates[0] == updates[1] and sum(updates[0].values()) > len(ids)

        # Admin changes made on one replica reach the others.
        new = {"name": "agree2", "kind": "agreement", "options": {"use_reference": False}}
        assert httpx.post(a.url + "/admin/reward-models", json=new).status_code == 201
        wait_for(lambda: "agree2" in httpx.get(b.url + "/admin/reward-models").json())
        assert httpx.post(b.url + "/admin/reward-models/arith/disable").status_code == 200
        wait_for(lambda: not httpx.get(a.url + "/admin/reward-models").json()["arith"]["enabled"])

        # Feedback on the new arm, given on A for a decision B made, reaches B's bandit too.
        r = httpx.post(
            b.url + "/generate",
            json={"prompt": "What is 2 + 2?", **TEACHES, "max_tokens": 4, "reward_model": "agree2"},
            timeout=120,
        )
        last = httpx.post(a.url + "/feedback", json={"id": r.json()["id"], "reward": 1}).json()
        wait_for(lambda: seq(b.url) == last["seq"])
        assert predictions(a.url) == predictions(b.url)

        # Off-policy evaluation reads the shared log, from any replica or the CLI.
        log = read_log(pg_url)
        assert log.n + sum(log.excluded.values()) == 13 and log.excluded.get("forced") == 1
        assert httpx.get(b.url + "/admin/ope", params={"bootstrap": 100}).json()["n"] == log.n

        # A replica that starts late catches up from the shared snapshot plus the log.
        c = start_server(replica_settings(tmp_path / "c", pg_url))
        assert seq(c.url) == last["seq"] and predictions(c.url) == predictions(a.url)
        assert httpx.get(c.url + "/admin/reward-models").json()["arith"]["enabled"] is False
    finally:
        for live in (a, b, c):
            if live is not None:
                live.stop()


def _replica_process(tmp: Path, pg_url: str, engine_url: str, port: int) -> subprocess.Popen[bytes]:
    """`laser-server serve` as its own process on the shared store; its engine is replica A
    (any OpenAI-compatible server will do), so it needs no vLLM of its own."""
    from laser.server import assets

    config = tmp / "replica.toml"
    model = assets.embedded_model(MODEL_CACHE)
    config.write_text(
        f"""
data_dir = "{tmp / "r"}"
cache_dir = "{MODEL_CACHE}"
port = {port}
[engine]
kind = "remote"
url = "{engine_url}"
served_name = "{assets.EMBEDDED_MODEL_NAME}"
tokenizer = "{model}"
max_model_len = 1024
[store]
url = "{pg_url}"
poll_interval_s = 0.05
[bandit]
epsilon = 0.2
warmup = 1
snapshot_every = 5
"""
        + "".join(f'[[reward_models]]\nname = "{r["name"]}"\nkind = "{r["kind"]}"\n' for r in RMS)
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    exe = str(Path(sys.executable).parent / "laser-server")
    return subprocess.Popen(
        [exe, "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "replica.log").open("wb"),
    )


def test_kill9_replica_under_feedback_load_loses_nothing_acknowledged(
    start_server: Callable[..., LiveServer], tmp_path: Path, pg_url: str
) -> None:
    import psycopg

    a = start_server(replica_settings(tmp_path / "a", pg_url))
    port = free_port()
    proc = _replica_process(tmp_path, pg_url, a.url, port)
    r_url = f"http://127.0.0.1:{port}"
    try:
        ids = []
        for i in range(40):
            r = httpx.post(
                a.url + "/generate",
                json={"prompt": PROMPTS[i % 4], **TEACHES, "max_tokens": 2},
                timeout=120,
            )
            ids.append(r.json()["id"])

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "replica.log").read_text()[-3000:]
            try:
                return httpx.get(r_url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout_s=180)
        acked: list[str] = []
        lock = threading.Lock()

        def send(chunk: list[str]) -> None:
            with httpx.Client(base_url=r_url, timeout=30) as c:
                for decision_id in chunk:
                    try:
                        fb = c.post("/feedback", json={"id": decision_id, "reward": 0.5})
                    except httpx.HTTPError:
                        return  # the replica is gone
                    if fb.status_code == 200:
                        with lock:
                            acked.append(decision_id)

        threads = [threading.Thread(target=send, args=(ids[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= 12, timeout_s=60)
        proc.send_signal(signal.SIGKILL)  # mid-load
        proc.wait(30)
        for t in threads:
            t.join(60)
        with psycopg.connect(pg_url) as conn:
            stored = {r[0] for r in conn.execute("SELECT decision_id FROM feedback")}
            last = conn.execute("SELECT max(seq) FROM feedback").fetchone()[0]
        assert set(acked) <= stored, "an acknowledged feedback was lost"
        # The surviving replica has applied every committed feedback, in order.
        wait_for(lambda: seq(a.url) == last)
        assert httpx.get(a.url + "/health").json()["counts"]["feedback"] == len(stored)
    finally:
        if proc.poll() is None:
            proc.kill()
        a.stop()


def test_feedback_rows_keep_commit_order(pg_url: str) -> None:
    """Concurrent feedback from many connections: sequence numbers are handed out in commit
    order, so a follower reading `seq > last` never skips one that commits later."""
    import asyncio

    from laser.server.store.base import Decision
    from laser.server.store.postgres import PgStore

    store = PgStore(pg_url, pool_size=8)

    async def run() -> list[int]:
        for i in range(40):
            await store.add_decision(
                Decision(
                    id=f"d{i}",
                    created=time.time(),
                    prompt="q",
                    task=None,
                    has_document=False,
                    arm="x",
                    propensity=1.0,
                    selection="bandit",
                    context=np.ones(3),
                    scores=[0.0],
                    chosen=0,
                    model="m",
                )
            )
        seen: list[int] = []

        async def follow() -> None:
            for _ in range(400):
                rows = await store.feedback_since(seen[-1] if seen else 0)
                seen.extend(r.seq for r in rows)
                if len(seen) >= 40:
                    return
                await asyncio.sleep(0.005)

        results = await asyncio.gather(
            follow(), *(store.add_feedback(f"d{i}", 1.0) for i in range(40))
        )
        assert sorted(s for s, _ in results[1:]) == list(range(1, 41))
        return seen

    seen = asyncio.run(run())
    store.close()
    assert seen == list(range(1, 41))  # no gaps, no repeats


def test_config_rejects_other_store_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        make_settings(tmp_path, store={"url": "mysql://x"})


def test_database_outage_is_a_clean_503_and_the_replica_recovers(
    start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """Its own PostgreSQL, stopped mid-service: nothing is acknowledged that was not
    committed (503 in the error shape, /health degraded), and service resumes by itself."""
    root = private_root()
    pg = LocalPostgres(root)
    pg.start()
    live = None
    try:
        live = start_server(replica_settings(tmp_path, pg.create_database("outage")))
        body = {"prompt": "What is 1 + 1?", "n": 1, "max_tokens": 2}
        ok = httpx.post(live.url + "/generate", json=body, timeout=120)
        assert ok.status_code == 200
        pg.stop()
        down = httpx.post(live.url + "/generate", json=body, timeout=120)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "store_unavailable"
        fb = httpx.post(
            live.url + "/feedback", json={"id": ok.json()["id"], "reward": 1}, timeout=60
        )
        assert fb.status_code == 503
        health = httpx.get(live.url + "/health", timeout=10).json()
        assert health["status"] == "degraded" and any("store" in f for f in health["faults"])
        pg.start()  # same data folder and port
        again = httpx.post(
            live.url + "/feedback", json={"id": ok.json()["id"], "reward": 1}, timeout=60
        )
        assert again.status_code == 200 and again.json()["seq"] == 1
        assert httpx.post(live.url + "/generate", json=body, timeout=120).status_code == 200
        wait_for(lambda: httpx.get(live.url + "/health", timeout=10).json()["status"] == "ok")
    finally:
        if live is not None:
            live.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
