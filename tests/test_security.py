"""Safe by default, outbound allow-list, start-up that survives stored state, the honest
decision log and async hygiene: on the real embedded default over loopback HTTP, with real
remote RMs (small HTTP servers on 127.0.0.1 / 127.0.0.2)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from laser.server.cli import main as cli_main
from laser.server.config import load_settings
from laser.server.outbound import HostNotAllowedError, allowed, check_url
from tests.conftest import TEACHES, LoopThread, make_settings, reply_json
from tests.test_serving import assert_error

KEY = {"Authorization": "Bearer s3cret"}
GEN = {"prompt": "What is 2 + 3?", **TEACHES, "max_tokens": 4}  # candidates that differ


# -- safe by default ---------------------------------------------------------------------------
def test_non_loopback_without_a_key_is_refused_unless_said_insecure(tmp_path: Path) -> None:
    assert load_settings(host="127.0.0.1").exposure_problem() is None
    assert load_settings(host="::1").exposure_problem() is None
    problem = load_settings(host="0.0.0.0").exposure_problem()
    assert problem is not None and "API key" in problem and "insecure_no_api_key" in problem
    assert load_settings(host="0.0.0.0", api_key="k" * 16).exposure_problem() is None
    assert load_settings(host="0.0.0.0", insecure_no_api_key=True).exposure_problem() is None
    # `serve` stops before loading anything, with the reason (nothing is bound).
    with pytest.raises(SystemExit) as stop:
        cli_main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert "refusing to listen on 0.0.0.0 without an API key" in str(stop.value.code)


def test_api_key_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "api_key"
    secret.write_text("from-file-0123456789\n")
    settings = load_settings(host="0.0.0.0", api_key_file=secret)
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "from-file-0123456789"
    assert settings.exposure_problem() is None
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_settings(api_key_file=tmp_path / "empty")


def test_with_a_key_feedback_and_bandit_routes_need_it(start_server: Any, tmp_path: Path) -> None:
    live = start_server(make_settings(tmp_path, api_key="s3cret"))
    try:
        gen = httpx.post(live.url + "/generate", json=GEN, timeout=120)
        assert gen.status_code == 200  # generation stays open unless protect_generate
        fb = {"id": gen.json()["id"], "reward": 1.0}
        assert_error(httpx.post(live.url + "/feedback", json=fb), 401)
        assert_error(httpx.get(live.url + "/bandit"), 401)
        assert_error(httpx.post(live.url + "/bandit/predict", json={"prompt": "2+2?"}), 401)
        assert httpx.post(live.url + "/feedback", json=fb, headers=KEY).status_code == 200
        assert httpx.get(live.url + "/bandit", headers=KEY).status_code == 200
        r = httpx.post(live.url + "/bandit/predict", json={"prompt": "2+2?"}, headers=KEY)
        assert r.status_code == 200
        assert httpx.get(live.url + "/health").status_code == 200  # probes stay open
    finally:
        live.stop()


# -- outbound allow-list -----------------------------------------------------------------------
def test_allow_list_entries() -> None:
    hosts = ["127.0.0.1", "10.0.0.0/8", "*.svc.internal", "rm-host"]
    assert allowed("http://127.0.0.1:9/x", hosts) and allowed("https://10.2.3.4/x", hosts)
    assert allowed("http://a.svc.internal/x", hosts) and allowed("http://RM-HOST:80", hosts)
    assert not allowed("http://127.0.0.2/x", hosts) and not allowed("http://svc.internal", hosts)
    assert not allowed("http://rm-host.evil.example/", hosts)
    with pytest.raises(HostNotAllowedError):
        check_url("http://169.254.169.254/latest/meta-data", hosts)
    with pytest.raises(ValueError, match="http and https"):
        check_url("file:///etc/passwd", hosts)


class _RM(BaseHTTPRequestHandler):
    """A remote RM: scores by length, or (path /redirect) a 307 to `target`."""

    target = ""
    hits = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).hits += 1
        if self.path == "/redirect":
            self.send_response(307)
            self.send_header("location", self.target)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        reply_json(self, {"scores": [float(len(r)) for r in body["responses"]]})

    def log_message(self, *args: Any) -> None:
        pass


def _serve(host: str) -> tuple[ThreadingHTTPServer, type[_RM]]:
    handler = type(f"RM_{host.replace('.', '_')}", (_RM,), {"hits": 0})
    httpd = ThreadingHTTPServer((host, 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, handler


@pytest.fixture
def rm_servers() -> Iterator[tuple[str, type[_RM], str, type[_RM]]]:
    """An RM on 127.0.0.1 (allowed) and one on 127.0.0.2 (not allowed in these tests)."""
    inside, in_handler = _serve("127.0.0.1")
    outside, out_handler = _serve("127.0.0.2")
    in_url = f"http://127.0.0.1:{inside.server_address[1]}"
    out_url = f"http://127.0.0.2:{outside.server_address[1]}"
    in_handler.target = out_url + "/score"
    yield in_url, in_handler, out_url, out_handler
    inside.shutdown()
    outside.shutdown()


def test_remote_rms_may_only_call_allowed_hosts(
    start_server: Any, tmp_path: Path, rm_servers: Any
) -> None:
    in_url, _, out_url, out_handler = rm_servers
    configured = [
        {"name": "agreement", "kind": "agreement"},
        {"name": "outside_cfg", "kind": "remote", "options": {"url": out_url + "/score"}},
    ]
    settings = make_settings(
        tmp_path,
        api_key="s3cret",
        outbound_hosts=["127.0.0.1"],
        reward_models=configured,
        bandit={"warmup": 0},
    )
    live = start_server(settings)
    try:
        # In the config file: the RM is not built, the server starts and says why (the
        # fault's detail only with the key: an open /health never names hosts).
        health = httpx.get(live.url + "/health", headers=KEY).json()
        assert health["status"] == "degraded"
        assert any("outside_cfg: unavailable" in f and "127.0.0.2" in f for f in health["faults"])
        assert health["reward_models"]["outside_cfg"]["available"] is False

        add = live.url + "/admin/reward-models"
        spec = {"name": "outside", "kind": "remote", "options": {"url": out_url + "/score"}}
        err = assert_error(httpx.post(add, json=spec, headers=KEY), 403, "options.url")
        assert err["code"] == "host_not_allowed"
        spec = {"name": "inside", "kind": "remote", "options": {"url": in_url + "/score"}}
        assert httpx.post(add, json=spec, headers=KEY).status_code == 201
        spec = {"name": "hop", "kind": "remote", "options": {"url": in_url + "/redirect"}}
        assert httpx.post(add, json=spec, headers=KEY).status_code == 201

        r = httpx.post(live.url + "/generate", json={**GEN, "reward_model": "inside"}, timeout=120)
        assert r.json()["reward_model"] == "inside" and r.json()["selection"] == "forced"
        # A redirect off the allowed hosts is never followed: the RM fails, the next scores.
        r = httpx.post(live.url + "/generate", json={**GEN, "reward_model": "hop"}, timeout=120)
        assert r.status_code == 200 and r.json()["selection"] == "fallback"
        assert out_handler.hits == 0
        arms = httpx.get(live.url + "/admin/reward-models", headers=KEY).json()
        assert "127.0.0.2" in arms["hop"]["last_error"]

        # Training jobs are held to the same list.
        outside = {"name": "outside", "kind": "remote", "options": {"url": out_url + "/score"}}
        job = {"engine": "hf", "items": [{"prompt": "1+1?"}], "reward_models": [outside]}
        r = httpx.post(live.url + "/v1/training/jobs", json=job, headers=KEY)
        assert assert_error(r, 403, "reward_models.0.options.url")["code"] == "host_not_allowed"
    finally:
        live.stop()


# -- start-up never fails on stored state --------------------------------------------------------
def test_restart_after_an_rm_left_the_config_and_with_unbuildable_rows(
    start_server: Any, tmp_path: Path, rm_servers: Any
) -> None:
    in_url, *_ = rm_servers
    base = [{"name": "agreement", "kind": "agreement"}, {"name": "relevance", "kind": "relevance"}]
    remote = {"name": "rr", "kind": "remote", "options": {"url": in_url + "/score"}}
    live = start_server(make_settings(tmp_path, reward_models=[*base, remote]))
    try:
        r = httpx.post(live.url + "/admin/reward-models/rr/disable")
        assert r.status_code == 200 and r.json()["enabled"] is False
    finally:
        live.stop()
    # The crash of the issue: rr removed from the config. Its stored row now has the full
    # spec, so it is rebuilt (still disabled) and the server starts.
    live = start_server(make_settings(tmp_path, reward_models=base))
    try:
        arms = httpx.get(live.url + "/admin/reward-models").json()
        assert arms["rr"]["enabled"] is False and arms["rr"]["available"] is True
        assert httpx.get(live.url + "/health").json()["status"] == "ok"
    finally:
        live.stop()
    # Rows an older version wrote (no options), and a saved adapter that is gone: the server
    # starts, those parts are off, /health says why.
    with sqlite3.connect(tmp_path / "laser.db") as db:
        db.execute(
            "UPDATE reward_models SET spec = ? WHERE name = 'rr'",
            (json.dumps({"name": "rr", "kind": "remote", "options": {}}),),
        )
        db.execute(
            "INSERT INTO reward_models VALUES ('ghost', ?, 1, 0)",
            (json.dumps({"name": "ghost", "kind": "hf", "options": {}}),),
        )
    (tmp_path / "policy.json").write_text(json.dumps({"name": "a", "path": str(tmp_path / "x")}))
    live = start_server(make_settings(tmp_path, reward_models=base))
    try:
        health = httpx.get(live.url + "/health").json()
        assert health["status"] == "degraded"
        faults = " | ".join(health["faults"])
        assert "reward model rr: unavailable" in faults and "options.url" in faults
        assert "reward model ghost: unavailable" in faults
        assert "policy: the saved policy was not restored" in faults
        assert health["reward_models"]["ghost"]["enabled"] is False
        r = httpx.post(live.url + "/admin/reward-models/rr/enable")
        assert assert_error(r, 409, "name")["code"] == "reward_model_unavailable"
        gen = httpx.post(live.url + "/generate", json=GEN, timeout=120)
        assert gen.status_code == 200 and gen.json()["reward_model"] in ("agreement", "relevance")
    finally:
        live.stop()


# -- the honest decision log -------------------------------------------------------------------
def test_every_decision_records_how_it_was_made(start_server: Any, tmp_path: Path) -> None:
    live = start_server(make_settings(tmp_path, bandit={"warmup": 0, "epsilon": 0.2}))
    try:
        ids = {}
        for how, extra in (("bandit", {}), ("forced", {"reward_model": "relevance"})):
            r = httpx.post(live.url + "/generate", json={**GEN, **extra}, timeout=120)
            # `abstain`: the drawn RM scored all alike and the next one chose.
            assert r.json()["selection"] in ((how, "abstain") if how == "bandit" else (how,))
            ids[how] = r.json()
    finally:
        live.stop()
    db = sqlite3.connect(tmp_path / "laser.db")
    rows = {
        r[0]: r[1:]
        for r in db.execute(
            "SELECT id, arm, propensity, selection, drawn_arm, probabilities FROM decisions"
        )
    }
    arm, propensity, selection, drawn, probs_json = rows[ids["bandit"]["id"]]
    probs = json.loads(probs_json)
    assert propensity == probs[arm]
    assert (selection == "bandit" and drawn == arm) or (selection == "abstain" and drawn != arm)
    assert sum(probs.values()) == pytest.approx(1.0) and len(probs) == 6
    # A forced row: marked, no draw, and the probability the bandit would have given it
    # (epsilon spreads 0.2 over 6 RMs, so it is below 1 whatever the greedy pick is).
    arm, propensity, selection, drawn, probs_json = rows[ids["forced"]["id"]]
    probs = json.loads(probs_json)
    assert (arm, selection, drawn) == ("relevance", "forced", None)
    assert propensity == probs["relevance"] and 0.2 / 6 - 1e-9 <= propensity < 1.0
    assert ids["forced"]["propensity"] == propensity


# -- async hygiene -----------------------------------------------------------------------------
class _Slow(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.slow: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing") and "took" in message:
            self.slow.append(message)


def test_no_route_blocks_the_event_loop(
    start_server: Any, loop_thread: LoopThread, tmp_path: Path
) -> None:
    """asyncio's debug mode logs every callback that holds the loop for more than
    `slow_callback_duration`; none of the main routes may (the engine's own output handler,
    which runs vLLM's detokenizer on the loop, is left out: it is not our code)."""
    live = start_server(make_settings(tmp_path, api_key="s3cret"))
    loop = loop_thread.loop
    handler = _Slow()
    logging.getLogger("asyncio").addHandler(handler)

    async def debug(on: bool) -> None:
        loop.set_debug(on)
        loop.slow_callback_duration = 0.05

    try:
        for _ in range(2):  # the first round warms caches (first featurizer call, first SQL)
            handler.slow.clear()
            loop_thread.run(debug(True))
            with httpx.Client(base_url=live.url, headers=KEY, timeout=120) as c:
                gen = c.post("/generate", json=GEN).json()
                assert c.post("/feedback", json={"id": gen["id"], "reward": 1}).status_code == 200
                chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
                assert c.post("/v1/chat/completions", json=chat).status_code == 200
                assert c.post("/bandit/predict", json={"prompt": "2+2?"}).status_code == 200
                for path in ("/health", "/bandit", "/metrics", "/v1/models", "/v1/policy"):
                    assert c.get(path).status_code == 200, path
                assert c.get("/v1/training/jobs").status_code == 200
                assert c.post("/admin/reward-models/judge/disable").status_code == 200
                assert c.post("/admin/reward-models/judge/enable").status_code == 200
                assert c.post("/admin/bandit/snapshot").status_code == 200
            loop_thread.run(debug(False))
        ours = [m for m in handler.slow if "output_handler" not in m and "vllm" not in m]
        assert ours == [], ours
    finally:
        loop_thread.run(debug(False))
        logging.getLogger("asyncio").removeHandler(handler)
        live.stop()
