"""The score stage of `collect.collect`: every RM scores every item's candidates once, cached
with the measured time. RMs see the question, documents and the task hint, never the
reference. Also the noise RM of the robustness check."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from laser.server.config import RewardModelSpec, Settings
from laser.server.engines.base import Engine, Generation
from laser.server.evaluation.cache import Cache
from laser.server.evaluation.config import CollectionRun, EvalError, EvalItem
from laser.server.evaluation.sampling import Sample
from laser.server.evaluation.strategies import FloatArray
from laser.server.featurize import SentenceEncoder
from laser.server.rms.base import Query, RewardModel
from laser.server.runtime import progress


class NoiseRM:
    """Scores that carry no information: a standard normal per (seed, question, candidate),
    deterministic so reruns agree.

    >>> import asyncio
    >>> rm = NoiseRM("noise", seed=0)
    >>> a = asyncio.run(rm.score(Query("q", "q"), ["x", "y"]))
    >>> a == asyncio.run(rm.score(Query("q", "q"), ["x", "y"]))
    True
    """

    kind = "noise"

    def __init__(self, name: str = "noise", seed: int = 0) -> None:
        self.name, self.seed = name, seed

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        out = []
        for j, r in enumerate(responses):
            h = hashlib.sha256(f"{self.seed}\0{query.question}\0{j}\0{r}".encode()).digest()
            out.append(float(np.random.default_rng(list(h[:16])).normal()))
        return out


def configured_reward_models(
    settings: Settings, engine: Engine, encoder: SentenceEncoder
) -> dict[str, RewardModel]:
    """The RMs `settings` configures, built as serving builds them."""
    from laser.server.services import Services

    return Services(engine, encoder, settings.outbound_hosts).reward_models(settings.reward_models)


def cache_identities(
    settings: Settings, reward_models: dict[str, RewardModel]
) -> dict[str, dict[str, Any]]:
    """What identifies each RM in the score cache: its config entry when it has one."""
    specs: dict[str, RewardModelSpec] = {s.name: s for s in settings.reward_models}
    # An RM's `version` (when it has one) changes whenever its scoring changes, so cached
    # scores of an older version are not reused.
    return {
        name: {
            **(specs[name].model_dump() if name in specs else {"name": name, "kind": rm.kind}),
            **({"version": v} if (v := getattr(rm, "version", None)) else {}),
        }
        for name, rm in reward_models.items()
    }


async def score(
    run: CollectionRun,
    items: list[EvalItem],
    samples: list[Sample],
    reward_models: dict[str, RewardModel],
) -> tuple[dict[str, FloatArray], dict[str, FloatArray]]:
    """(scores, seconds) per RM: each candidate's score and each item's scoring time."""
    config, stats = run.config, run.stats
    rm_ids = cache_identities(run.settings, reward_models)
    n_items = len(items)
    scores = {name: np.zeros((n_items, config.n)) for name in reward_models}
    seconds = {name: np.zeros(n_items) for name in reward_models}
    stats["rm_wall_seconds"] = {name: 0.0 for name in reward_models}
    t0 = time.perf_counter()
    # Where each RM's likelihoods came from (the engine counts them): kept from sampling, or
    # an engine pass. Items scored from the cache count neither.
    counters: dict[str, int] = getattr(run.engine, "loglik_tokens", {})
    stats["loglik_sources"] = {}
    with progress(n_items * len(reward_models), "scoring", config.progress) as bar:
        for name, rm in reward_models.items():
            before = dict(counters)
            keys = [
                _score_key(run.settings, rm_ids[name], it, s.key)
                for it, s in zip(items, samples, strict=True)
            ]
            todo = _from_cache(run.cache, keys, scores[name], seconds[name], bar)
            await _score_missing(
                run, name, rm, items, samples, keys, todo, scores[name], seconds[name], bar
            )
            used = {k: counters.get(k, 0) - before.get(k, 0) for k in counters}
            if used.get("from_generation") or used.get("engine_passes"):
                stats["loglik_sources"][name] = {
                    "from_generation": used.get("from_generation", 0),
                    "engine_passes": used.get("engine_passes", 0),
                }
    stats["score_seconds"] = time.perf_counter() - t0
    return scores, seconds


def _score_key(settings: Settings, rm_id: dict[str, Any], it: EvalItem, generation: str) -> str:
    q = it.query
    return Cache.digest(
        {
            "rm": rm_id,
            "encoder": settings.featurizer.model or "embedded",
            "generation": generation,
            "question": q.question,
            "documents": q.documents,
            "task": q.task,
        }
    )


def _from_cache(
    cache: Cache, keys: list[str], scores: FloatArray, seconds: FloatArray, bar: Any
) -> list[int]:
    """Fills in the items the cache holds; returns the others."""
    todo = []
    for i, key in enumerate(keys):
        hit = cache.get("score", key)
        if hit is None:
            todo.append(i)
            continue
        scores[i], seconds[i] = hit["scores"], hit["seconds"]
        bar.update(1)
    return todo


async def _score_missing(
    run: CollectionRun,
    name: str,
    rm: RewardModel,
    items: list[EvalItem],
    samples: list[Sample],
    keys: list[str],
    todo: list[int],
    scores: FloatArray,
    seconds: FloatArray,
    bar: Any,
) -> None:
    """Scores the `todo` items with one RM over chunks of items scored concurrently (vLLM
    batches the likelihood requests). A chunk's wall time is shared out over its items in
    proportion to each call's latency: the cost report then charges each item what it cost
    at this throughput, not a latency inflated by its neighbours."""
    chunk = run.config.concurrency
    keep = getattr(run.engine, "keep_samples", None)
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        if keep is not None:
            # The engine keeps a bounded number of sampled logprobs (the newest); a run with
            # more samples than that hands each chunk's back just before scoring it, so the
            # loglik RM never needs an engine pass for a cached sample.
            for i in part:
                keep(items[i].prompt, samples[i].generation.completions)
        t = time.perf_counter()
        results = await asyncio.gather(
            *(
                _score_item(run, name, rm, items[i], samples[i].generation, keys[i], bar)
                for i in part
            )
        )
        wall = time.perf_counter() - t
        run.stats["rm_wall_seconds"][name] += wall
        total_latency = sum(lat for _, lat in results) or 1.0
        for i, (vals, lat) in zip(part, results, strict=True):
            cost = wall * lat / total_latency
            scores[i], seconds[i] = vals, cost
            run.cache.put("score", keys[i], {"scores": vals, "seconds": cost})
        run.stats["rm_score_calls"] += len(part)


async def _score_item(
    run: CollectionRun,
    name: str,
    rm: RewardModel,
    it: EvalItem,
    generation: Generation,
    key: str,
    bar: Any,
) -> tuple[list[float], float]:
    """One item's scores from one RM, and the call's latency."""
    texts = [c.text for c in generation.completions]
    async with run.limit:
        t = time.perf_counter()
        try:
            vals = await rm.score(it.query, texts)
        except Exception as exc:
            raise EvalError(
                f"RM {name!r} failed on item {it.item.id!r}: {type(exc).__name__}: {exc}"
            ) from exc
        latency = time.perf_counter() - t
    if len(vals) != len(texts) or not all(math.isfinite(v) for v in vals):
        raise EvalError(f"RM {name!r} returned bad scores on item {it.item.id!r}")
    out = [float(v) for v in vals]
    # Cached at once (with its raw latency), so an interrupted run loses nothing; the
    # chunk's share-out (`_score_missing`) replaces the time.
    run.cache.put("score", key, {"scores": out, "seconds": latency})
    bar.update(1)
    return out, latency


async def noise_scores(items: list[EvalItem], samples: list[Sample], seed: int) -> FloatArray:
    """The noise RM's score of every candidate."""
    rm = NoiseRM(seed=seed)
    return np.array(
        [
            await rm.score(it.query, [c.text for c in s.generation.completions])
            for it, s in zip(items, samples, strict=True)
        ]
    )
