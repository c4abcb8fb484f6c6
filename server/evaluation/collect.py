"""`collect`: everything the strategies choose from, in named stages.

1. load: the items (built-in tasks and/or a user JSONL), their prompts rendered exactly as
   serving renders them (chat template, document template, truncation);
2. sample: n candidates per item from ONE engine call, and a greedy decode (`sampling.py`);
3. score: every RM scores every item's candidates once (`scoring.py`);
4. grade: every candidate and greedy answer against the reference;
5. featurize: the bandit's context per item, and the ablation's other contexts.

Samples and scores are cached on disk (`cache.py`), so a rerun pays only for what is new.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from laser.server.config import Settings
from laser.server.data import DataError, PromptItem, load_prompts
from laser.server.engines.base import Engine, Generation
from laser.server.evaluation import data as eval_data
from laser.server.evaluation import grading
from laser.server.evaluation.cache import Cache
from laser.server.evaluation.config import Collected, CollectionRun, EvalConfig, EvalItem
from laser.server.evaluation.sampling import Sample, greedy_decode, sample
from laser.server.evaluation.scoring import configured_reward_models, noise_scores, score
from laser.server.evaluation.strategies import FloatArray, Table
from laser.server.featurize import Featurizer, SentenceEncoder, query_kind
from laser.server.observe import ANSWER_KINDS, answer_key
from laser.server.protocol import GenerateRequest
from laser.server.rms.base import RewardModel


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
    stats: dict[str, Any] = {"engine_generate_calls": 0, "rm_score_calls": 0}
    run = CollectionRun(
        config, settings, engine, cache, asyncio.Semaphore(config.concurrency), stats
    )
    if reward_models is None:
        reward_models = configured_reward_models(settings, engine, encoder)
    # Ensemble arms are not scored: their scores are their members' (`rms/ensemble.py`).
    ensembles = {
        name: list(rm.members)  # type: ignore[attr-defined]
        for name, rm in reward_models.items()
        if rm.kind == "ensemble"
    }
    reward_models = {n: rm for n, rm in reward_models.items() if n not in ensembles}
    items = load(run)
    samples = await sample(run, items)
    greedy = await greedy_decode(run, items) if config.greedy else None
    scores, seconds = await score(run, items, samples, reward_models)
    noise = await noise_scores(items, samples, config.seed) if config.noise_rm else None
    grades = grade(items, samples, greedy, config.n)
    contexts = featurize(run, items, encoder)
    kinds = [query_kind(it.question, bool(it.documents), it.query.task) for it in items]
    keys = [
        [answer_key(c.text, ANSWER_KINDS.get(kind)) for c in s.generation.completions]
        for s, kind in zip(samples, kinds, strict=True)
    ]
    run.stats["cache_hits"], run.stats["cache_misses"] = cache.hits, cache.misses
    table = Table(
        tasks=[it.task for it in items],
        quality=grades.quality,
        scores=scores,
        contexts=contexts.serving,
        exact=grades.exact,
        greedy_quality=grades.greedy_quality,
        greedy_exact=grades.greedy_exact,
        score_seconds=seconds,
        regions=contexts.regions,
        context_variants=contexts.variants,
        keys=keys,
        kinds=kinds,
    )
    for name, members in ensembles.items():
        table = table.with_ensemble_arm(name, members)
    return Collected(items, [s.generation for s in samples], greedy, table, noise, run.stats)


# -- load -------------------------------------------------------------------------------------
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


def load(run: CollectionRun) -> list[EvalItem]:
    """The items, with their prompts exactly as serving renders them (chat template, document
    template, truncation)."""
    from laser.server.prompts import prepare

    items: list[EvalItem] = []
    for task, item in load_items(run.config):
        req = GenerateRequest.model_validate(
            {
                "prompt": item.prompt,
                "documents": item.documents or None,
                "document_policy": "truncate",
            }
        )
        try:
            prep = prepare(req, run.engine, run.config.max_tokens)
        except Exception as exc:
            raise DataError(f"item {item.id or item.prompt[:40]!r}: {exc}") from exc
        kind = grading.item_kind(item)
        items.append(
            EvalItem(task, item, kind, prep.prompt, prep.question, prep.documents, prep.truncated)
        )
    run.stats["items"] = len(items)
    run.stats["documents_truncated"] = sum(it.truncated for it in items)
    return items


# -- grade ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grades:
    quality: FloatArray
    """(items, n): each candidate's graded quality (correctness, or F1 for QA)."""
    exact: FloatArray
    greedy_quality: FloatArray | None
    greedy_exact: FloatArray | None


def grade(
    items: list[EvalItem], samples: list[Sample], greedy: list[Generation] | None, n: int
) -> Grades:
    """Every candidate and greedy answer against the reference: only the strategies' feedback
    and the report see it, never an RM."""
    quality = np.zeros((len(items), n))
    exact = np.zeros((len(items), n))
    for i, (it, s) in enumerate(zip(items, samples, strict=True)):
        assert it.item.reference is not None
        for j, c in enumerate(s.generation.completions):
            gr = grading.grade(c.text, it.item.reference, it.kind)
            quality[i, j], exact[i, j] = gr.quality, gr.exact
    if greedy is None:
        return Grades(quality, exact, None, None)
    greedy_grades = [
        grading.grade(g.completions[0].text, it.item.reference or "", it.kind)
        for it, g in zip(items, greedy, strict=True)
    ]
    return Grades(
        quality,
        exact,
        np.array([gr.quality for gr in greedy_grades]),
        np.array([gr.exact for gr in greedy_grades]),
    )


# -- featurize --------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Contexts:
    serving: FloatArray
    """The context serving would compute per item (`settings.featurizer`)."""
    regions: int
    variants: dict[str, tuple[FloatArray, int]]
    """The other contexts the settings ablation compares: name -> (contexts, regions)."""


def featurize(run: CollectionRun, items: list[EvalItem], encoder: SentenceEncoder) -> Contexts:
    """The bandit's context per item, from the question, whether it has documents and the
    task hint, as serving computes it."""
    t0 = time.perf_counter()
    questions = [it.question for it in items]
    has_doc = [bool(it.documents) for it in items]
    hints = [it.query.task for it in items]
    memo = _MemoEncoder(encoder)
    fs = run.settings.featurizer
    featurizer = Featurizer.from_settings(memo, fs)  # type: ignore[arg-type]
    contexts = featurizer.features_batch(questions, has_doc, hints)
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
    run.stats["featurize_seconds"] = time.perf_counter() - t0
    return Contexts(contexts, featurizer.regions, context_variants)
