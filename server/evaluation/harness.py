"""The evaluation harness: sample once, score once, then let every strategy choose.

1. Items: built-in tasks (`laser.server.evaluation.data`) and/or a user JSONL.
2. Prompts are rendered exactly as serving renders them (`prompts.prepare`: chat template,
   document template, truncation).
3. For every item the n candidates come from ONE engine call, and a greedy decode from one
   more; both are cached on disk, keyed by model, prompt and sampling settings.
4. Every RM scores every item's candidates once (cached too, with the measured time). RMs
   see the question, documents and the task hint, never the reference.
5. The strategies (`strategies.py`) choose from the same candidates over seeded orderings;
   `report.py` writes the Markdown/JSON report and plots.

>>> # report = await evaluate(EvalConfig(tasks=["arithmetic"], items_per_task=10),
>>> #                         settings, engine, encoder)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from laser.server.config import RewardModelSpec, Settings
from laser.server.data import DataError, PromptItem, load_prompts
from laser.server.engines.base import Engine, Generation, Sampling
from laser.server.evaluation import data as eval_data
from laser.server.evaluation.analysis import analyse, pilot_table
from laser.server.evaluation.cache import Cache
from laser.server.evaluation.config import Collected, EvalConfig, EvalError, EvalItem
from laser.server.evaluation.metrics import grade, item_kind
from laser.server.evaluation.strategies import (
    Table,
)
from laser.server.featurize import Featurizer, SentenceEncoder
from laser.server.protocol import GenerateRequest
from laser.server.rms.base import Query, RewardModel
from laser.server.runtime import progress

log = logging.getLogger("laser.server")


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


class _MemoEncoder:
    """A sentence encoder that embeds each distinct text once (the ablation's contexts all
    start from the same embeddings)."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        self.encoder, self.dim = encoder, encoder.dim
        self._seen: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        todo = [x for x in dict.fromkeys(texts) if x not in self._seen]
        if todo:
            for x, v in zip(todo, self.encoder.encode(todo), strict=True):
                self._seen[x] = v
        if not texts:
            return np.zeros((0, self.dim))
        return np.stack([self._seen[x] for x in texts])


# -- collection -------------------------------------------------------------------------------
def load_items(config: EvalConfig) -> list[tuple[str, PromptItem]]:
    """(task name, item) for every built-in task and the user's JSONL."""
    out: list[tuple[str, PromptItem]] = []
    for k, task in enumerate(config.tasks):
        count = config.task_items.get(task, config.items_per_task)
        for item in eval_data.build_task(task, count, seed=config.seed + k):
            out.append((task, item))
    if config.prompts_file:
        for item in load_prompts(config.prompts_file, require_reference=True):
            out.append((f"user:{item.task}" if item.task else "user", item))
    return out


def _gen_json(g: Generation, seconds: float) -> dict[str, Any]:
    return {
        "completions": [asdict(c) for c in g.completions],
        "prompt_tokens": g.prompt_tokens,
        "seconds": seconds,
    }


def _gen_from(d: dict[str, Any]) -> Generation:
    from laser.server.engines.base import Completion

    return Generation([Completion(**c) for c in d["completions"]], d["prompt_tokens"])


async def collect(
    config: EvalConfig,
    settings: Settings,
    engine: Engine,
    encoder: SentenceEncoder,
    cache: Cache,
    reward_models: dict[str, RewardModel] | None = None,
) -> Collected:
    """Build the items, sample, greedy-decode, score and grade: everything the strategies need.

    `reward_models` defaults to the RMs `settings` configures.
    """
    from laser.server.prompts import prepare
    from laser.server.services import Services

    stats: dict[str, Any] = {"engine_generate_calls": 0, "rm_score_calls": 0}
    if reward_models is None:
        reward_models = Services(engine, encoder, settings.outbound_hosts).reward_models(
            settings.reward_models
        )
    # What identifies an RM in the score cache: its config entry when it has one.
    specs: dict[str, RewardModelSpec] = {s.name: s for s in settings.reward_models}
    # An RM's `version` (when it has one) changes whenever its scoring changes, so cached
    # scores of an older version are not reused.
    rm_ids = {
        name: {
            **(specs[name].model_dump() if name in specs else {"name": name, "kind": rm.kind}),
            **({"version": v} if (v := getattr(rm, "version", None)) else {}),
        }
        for name, rm in reward_models.items()
    }

    # Prompts exactly as serving renders them (chat template, document template, truncation).
    items: list[EvalItem] = []
    for task, item in load_items(config):
        req = GenerateRequest.model_validate(
            {
                "prompt": item.prompt,
                "documents": item.documents or None,
                "document_policy": "truncate",
            }
        )
        try:
            prep = prepare(req, engine, config.max_tokens)
        except Exception as exc:
            raise DataError(f"item {item.id or item.prompt[:40]!r}: {exc}") from exc
        kind = item_kind(item)
        items.append(
            EvalItem(task, item, kind, prep.prompt, prep.question, prep.documents, prep.truncated)
        )
    stats["items"] = len(items)
    stats["documents_truncated"] = sum(it.truncated for it in items)

    model_id = {
        "model": engine.model_name,
        "path": settings.engine.model or "embedded",
        "engine_seed": settings.engine.seed,
    }
    sampling = Sampling(config.n, config.max_tokens, config.temperature, config.top_p)
    greedy_sampling = Sampling(1, config.max_tokens, 0.0, 1.0)

    def gen_key(it: EvalItem, s: Sampling) -> str:
        return Cache.digest({**model_id, "prompt": it.prompt, "sampling": asdict(s)})

    sem = asyncio.Semaphore(config.concurrency)

    async def generate(it: EvalItem, s: Sampling, kind: str, bar: Any) -> tuple[Generation, str]:
        key = gen_key(it, s)
        hit = cache.get(kind, key)
        if hit is not None:
            bar.update(1)
            g = _gen_from(hit)
            keep = getattr(engine, "keep_samples", None)
            if keep is not None:  # the loglik RM scores cached samples without an engine pass
                keep(it.prompt, g.completions)
            return g, key
        async with sem:
            t = time.perf_counter()
            try:
                g = await engine.generate(it.prompt, s)  # ONE call with n
            except Exception as exc:
                raise EvalError(f"generation failed for item {it.item.id!r}: {exc}") from exc
            stats["engine_generate_calls"] += 1
            cache.put(kind, key, _gen_json(g, time.perf_counter() - t))
        bar.update(1)
        return g, key

    t0 = time.perf_counter()
    with progress(len(items), f"sampling n={config.n}", config.progress) as bar:
        gens = await asyncio.gather(*(generate(it, sampling, "gen", bar) for it in items))
    stats["sample_seconds"] = time.perf_counter() - t0
    greedy = None
    if config.greedy:
        t0 = time.perf_counter()
        with progress(len(items), "greedy decoding", config.progress) as bar:
            greedy = [
                g
                for g, _ in await asyncio.gather(
                    *(generate(it, greedy_sampling, "greedy", bar) for it in items)
                )
            ]
        stats["greedy_seconds"] = time.perf_counter() - t0

    # Scoring: one RM at a time over chunks of items scored concurrently (vLLM batches the
    # likelihood requests). A chunk's wall time is shared out over its items in proportion
    # to each call's latency: the cost report then charges each item what it cost at this
    # throughput, not a latency inflated by its neighbours.
    n_items = len(items)
    scores = {name: np.zeros((n_items, config.n)) for name in reward_models}
    seconds = {name: np.zeros(n_items) for name in reward_models}
    stats["rm_wall_seconds"] = {name: 0.0 for name in reward_models}

    def score_key(name: str, it: EvalItem, gkey: str) -> str:
        q = it.query
        return Cache.digest(
            {
                "rm": rm_ids[name],
                "encoder": settings.featurizer.model or "embedded",
                "generation": gkey,
                "question": q.question,
                "documents": q.documents,
                "task": q.task,
            }
        )

    async def score_one(name: str, i: int, key: str) -> tuple[list[float], float]:
        it, (g, _) = items[i], gens[i]
        texts = [c.text for c in g.completions]
        async with sem:
            t = time.perf_counter()
            try:
                vals = await reward_models[name].score(it.query, texts)
            except Exception as exc:
                raise EvalError(
                    f"RM {name!r} failed on item {it.item.id!r}: {type(exc).__name__}: {exc}"
                ) from exc
            latency = time.perf_counter() - t
        if len(vals) != len(texts) or not all(math.isfinite(v) for v in vals):
            raise EvalError(f"RM {name!r} returned bad scores on item {it.item.id!r}")
        out = [float(v) for v in vals]
        # Cached at once (with its raw latency), so an interrupted run loses nothing; the
        # chunk's share-out below replaces the time.
        cache.put("score", key, {"scores": out, "seconds": latency})
        bar.update(1)
        return out, latency

    chunk = config.concurrency
    t0 = time.perf_counter()
    # Where each RM's likelihoods came from (the engine counts them): kept from sampling, or
    # an engine pass. Items scored from the cache count neither.
    counters: dict[str, int] = getattr(engine, "loglik_tokens", {})
    stats["loglik_sources"] = {}
    with progress(n_items * len(reward_models), "scoring", config.progress) as bar:
        for name in reward_models:
            before = dict(counters)
            keys = [score_key(name, it, gkey) for it, (_, gkey) in zip(items, gens, strict=True)]
            todo = []
            for i, key in enumerate(keys):
                hit = cache.get("score", key)
                if hit is None:
                    todo.append(i)
                    continue
                scores[name][i], seconds[name][i] = hit["scores"], hit["seconds"]
                bar.update(1)
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                t = time.perf_counter()
                results = await asyncio.gather(*(score_one(name, i, keys[i]) for i in part))
                wall = time.perf_counter() - t
                stats["rm_wall_seconds"][name] += wall
                total_latency = sum(lat for _, lat in results) or 1.0
                for i, (vals, lat) in zip(part, results, strict=True):
                    cost = wall * lat / total_latency
                    scores[name][i], seconds[name][i] = vals, cost
                    cache.put("score", keys[i], {"scores": vals, "seconds": cost})
                stats["rm_score_calls"] += len(part)
            used = {k: counters.get(k, 0) - before.get(k, 0) for k in counters}
            if used.get("from_generation") or used.get("engine_passes"):
                stats["loglik_sources"][name] = {
                    "from_generation": used.get("from_generation", 0),
                    "engine_passes": used.get("engine_passes", 0),
                }
    stats["score_seconds"] = time.perf_counter() - t0

    noise = None
    if config.noise_rm:
        rm = NoiseRM(seed=config.seed)
        noise = np.array(
            [
                await rm.score(it.query, [c.text for c in g.completions])
                for it, (g, _) in zip(items, gens, strict=True)
            ]
        )

    # Grading against the reference: only the strategies' feedback and the report see it.
    quality = np.zeros((n_items, config.n))
    exact = np.zeros((n_items, config.n))
    for i, (it, (g, _)) in enumerate(zip(items, gens, strict=True)):
        assert it.item.reference is not None
        for j, c in enumerate(g.completions):
            gr = grade(c.text, it.item.reference, it.kind)
            quality[i, j], exact[i, j] = gr.quality, gr.exact
    gq = ge = None
    if greedy is not None:
        grades = [
            grade(g.completions[0].text, it.item.reference or "", it.kind)
            for it, g in zip(items, greedy, strict=True)
        ]
        gq = np.array([gr.quality for gr in grades])
        ge = np.array([gr.exact for gr in grades])

    t0 = time.perf_counter()
    questions = [it.question for it in items]
    has_doc = [bool(it.documents) for it in items]
    hints = [it.query.task for it in items]
    memo = _MemoEncoder(encoder)
    featurizer = Featurizer.from_settings(memo, settings.featurizer)  # type: ignore[arg-type]
    contexts = featurizer.features_batch(questions, has_doc, hints)
    # The contexts the settings ablation compares (the serving one is `features`).
    fs = settings.featurizer
    variants = {
        "kind": Featurizer(None, context="kind"),
        "kind+emb4": Featurizer(memo, seed=fs.seed, context="kind", embed_dims=4),  # type: ignore[arg-type]
        "kind+emb16": Featurizer(memo, seed=fs.seed, context="kind", embed_dims=16),  # type: ignore[arg-type]
        "projection64": Featurizer(memo, 64, fs.seed, context="projection"),  # type: ignore[arg-type]
    }
    context_variants = {
        name: (f.features_batch(questions, has_doc, hints), f.regions)
        for name, f in variants.items()
    }
    stats["featurize_seconds"] = time.perf_counter() - t0
    stats["cache_hits"], stats["cache_misses"] = cache.hits, cache.misses
    table = Table(
        tasks=[it.task for it in items],
        quality=quality,
        scores=scores,
        contexts=contexts,
        exact=exact,
        greedy_quality=gq,
        greedy_exact=ge,
        score_seconds=seconds,
        regions=featurizer.regions,
        context_variants=context_variants,
    )
    return Collected(items, [g for g, _ in gens], greedy, table, noise, stats)


def _items_jsonl(col: Collected, heldout: set[int], path: Path) -> None:
    t = col.table
    with path.open("w", encoding="utf-8") as f:
        for i, it in enumerate(col.items):
            row = {
                "id": it.item.id,
                "task": it.task,
                "split": "heldout" if i in heldout else "stream",
                "prompt": it.item.prompt,
                "reference": it.item.reference,
                "documents_truncated": it.truncated,
                "candidates": [
                    {
                        "text": c.text,
                        "quality": float(t.quality[i, j]),
                        "scores": {rm: float(t.scores[rm][i, j]) for rm in t.rms},
                    }
                    for j, c in enumerate(col.generations[i].completions)
                ],
                "greedy": col.greedy[i].completions[0].text if col.greedy else None,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


async def evaluate(
    config: EvalConfig,
    settings: Settings,
    engine: Engine,
    encoder: SentenceEncoder,
    out_dir: str | Path,
    cache_dir: str | Path | None,
    command: str = "",
    reward_models: dict[str, RewardModel] | None = None,
) -> dict[str, Any]:
    """Collect (cached), analyse, and write the report into `out_dir`; returns the report
    (with `config.pilot`: only the per-task RM table, `pilot.md` / `pilot.json`).

    `cache_dir=None` disables the cache.
    """
    import platform

    from laser.server.evaluation import report as rep

    start = time.perf_counter()
    cache = Cache(Path(cache_dir) if cache_dir is not None else None)
    col = await collect(config, settings, engine, encoder, cache, reward_models)
    col.stats["model"] = engine.model_name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = pilot_table(col) if config.pilot else analyse(col, config, settings)
    report["model"] = engine.model_name
    report["config"] = {k: v for k, v in asdict(config).items() if k != "progress"}
    report["command"] = command
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    report["stats"] = col.stats
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    if config.pilot:
        report["files"] = rep.write_pilot(report, out)
        return report
    _items_jsonl(col, set(report.pop("heldout_items")), out / "items.jsonl")
    report["files"] = [*rep.write(report, out), "items.jsonl"]
    return report
