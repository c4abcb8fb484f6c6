"""The sample stage of `collect.collect`: the n candidates of every item from ONE engine
call, and a greedy decode from one more; both cached on disk, keyed by model, prompt and
sampling settings."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, NamedTuple

from laser.server.engines.base import Completion, Generation, Sampling
from laser.server.evaluation.cache import Cache
from laser.server.evaluation.config import CollectionRun, EvalError, EvalItem
from laser.server.runtime import progress


class Sample(NamedTuple):
    generation: Generation
    key: str
    """The generation's cache key: the score cache's keys build on it."""


async def sample(run: CollectionRun, items: list[EvalItem]) -> list[Sample]:
    """Each item's n candidates (`config.n`, temperature, top_p)."""
    config = run.config
    sampling = Sampling(config.n, config.max_tokens, config.temperature, config.top_p)
    t0 = time.perf_counter()
    with progress(len(items), f"sampling n={config.n}", config.progress) as bar:
        samples = await asyncio.gather(*(_generate(run, it, sampling, "gen", bar) for it in items))
    run.stats["sample_seconds"] = time.perf_counter() - t0
    return samples


async def greedy_decode(run: CollectionRun, items: list[EvalItem]) -> list[Generation]:
    """Each item's greedy answer (the greedy-decoding baseline)."""
    greedy_sampling = Sampling(1, run.config.max_tokens, 0.0, 1.0)
    t0 = time.perf_counter()
    with progress(len(items), "greedy decoding", run.config.progress) as bar:
        greedy = [
            g
            for g, _ in await asyncio.gather(
                *(_generate(run, it, greedy_sampling, "greedy", bar) for it in items)
            )
        ]
    run.stats["greedy_seconds"] = time.perf_counter() - t0
    return greedy


def _generation_key(run: CollectionRun, item: EvalItem, sampling: Sampling) -> str:
    model_id = {
        "model": run.engine.model_name,
        "path": run.settings.engine.model or "embedded",
        "engine_seed": run.settings.engine.seed,
    }
    return Cache.digest({**model_id, "prompt": item.prompt, "sampling": asdict(sampling)})


async def _generate(
    run: CollectionRun, item: EvalItem, sampling: Sampling, kind: str, bar: Any
) -> Sample:
    """One item's generation: from the cache under `kind`, else ONE engine call with n."""
    key = _generation_key(run, item, sampling)
    hit = run.cache.get(kind, key)
    if hit is not None:
        bar.update(1)
        g = _generation_from_json(hit)
        keep = getattr(run.engine, "keep_samples", None)
        if keep is not None:  # the loglik RM scores cached samples without an engine pass
            keep(item.prompt, g.completions)
        return Sample(g, key)
    async with run.limit:
        t = time.perf_counter()
        try:
            g = await run.engine.generate(item.prompt, sampling)  # ONE call with n
        except Exception as exc:
            raise EvalError(f"generation failed for item {item.item.id!r}: {exc}") from exc
        run.stats["engine_generate_calls"] += 1
        run.cache.put(kind, key, _generation_json(g, time.perf_counter() - t))
    bar.update(1)
    return Sample(g, key)


def _generation_json(g: Generation, seconds: float) -> dict[str, Any]:
    return {
        "completions": [asdict(c) for c in g.completions],
        "prompt_tokens": g.prompt_tokens,
        "seconds": seconds,
    }


def _generation_from_json(d: dict[str, Any]) -> Generation:
    return Generation([Completion(**c) for c in d["completions"]], d["prompt_tokens"])
