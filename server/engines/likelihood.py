"""The arithmetic of likelihood scoring with vLLM (`VLLMEngine.loglikelihoods`): one
request's sampling parameters, reading the prompt logprobs it computed, filling positions the
prefix cache skipped from sibling requests, and the mean per continuation."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Scored:
    """One continuation's likelihood request: its token ids, the first continuation
    position, and the per-token logprobs known so far (position -> logprob)."""

    ids: list[int]
    first: int
    known: dict[int, float]
    prompt: Any


def loglik_params(reuse: bool) -> Any:
    """A likelihood request: the prompt's logprobs, one dummy token generated.

    vLLM skips the prefix cache for prompt-logprob requests by default: it returns logprobs
    only for the tokens it computes. Only the continuation's are needed, so the shared prefix
    (a long document, computed by the generation request or the first candidate) may come
    from the cache: one prefill instead of n. detokenize=False: the per-token strings of a
    long prompt are never read."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=1,
        prompt_logprobs=0,
        detokenize=False,
        skip_reading_prefix_cache=not reuse,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def token_logprobs(out: Any, ids: list[int], start: int) -> dict[int, float]:
    """Position -> logprob of the token at that position, for positions from `start` that
    this request computed."""
    lps = out.prompt_logprobs or []
    return {
        i: lps[i][ids[i]].logprob for i in range(start, len(ids)) if lps[i] and ids[i] in lps[i]
    }


def fill_from_siblings(requests: list[Scored]) -> list[Scored]:
    """Fill positions the prefix cache skipped (the cache reached into a continuation: its
    own generation, or a sibling with the same first tokens past a block boundary) from a
    sibling that computed them; returns those still missing some, to prefill again. Token
    i's logprob depends only on tokens 0..i, so a sibling with the same tokens up to i has
    the same value."""
    redo = []
    for r in requests:
        missing = [i for i in range(r.first, len(r.ids)) if i not in r.known]
        if not missing:
            continue
        for other in requests:
            if other is not r:
                same = common_prefix_len(other.ids, r.ids)
                for i in missing:
                    if i < same and i in other.known:
                        r.known.setdefault(i, other.known[i])
        if any(i not in r.known for i in missing):
            redo.append(r)
    return redo


def mean_known(res: Scored) -> float:
    """The mean logprob of a continuation's tokens (-inf when none is known)."""
    vals = [res.known[i] for i in range(res.first, len(res.ids)) if i in res.known]
    return sum(vals) / len(vals) if vals else float("-inf")


def digest(prompt: str) -> bytes:
    return hashlib.blake2b(prompt.encode(), digest_size=16).digest()


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """
    >>> common_prefix_len([1, 2, 3], [1, 2, 4, 5])
    2
    """
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
