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
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laser.server.config import RewardModelSpec, Settings
from laser.server.data import DataError, PromptItem, load_prompts
from laser.server.engine_api import Engine, Generation, Sampling
from laser.server.evaluation import data as eval_data
from laser.server.evaluation.metrics import KIND_TASK, grade, item_kind
from laser.server.evaluation.strategies import (
    LaserSettings,
    Table,
)
from laser.server.featurize import Featurizer, SentenceEncoder
from laser.server.protocol import GenerateRequest
from laser.server.rewards import Query, RewardModel

log = logging.getLogger("laser.server")

CACHE_VERSION = 1


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. Invalid values raise `ValueError`.

    >>> EvalConfig(tasks=["arithmetic", "longqa"], items_per_task=30, n=8).orderings
    20
    """

    tasks: list[str] = field(default_factory=lambda: list(eval_data.TASKS))
    """Built-in tasks (see `data.TASKS`); may be empty when `prompts_file` is given."""
    items_per_task: int = 30
    prompts_file: str | None = None
    """A user JSONL (`prompt`, `reference`, optional `document(s)`, `task`)."""
    n: int = 8
    max_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 1.0
    orderings: int = 20
    """Seeded orders of the stream split that LASeR learns over (mean and spread)."""
    heldout_share: float = 0.5
    """Share of each task's items held out: scored with LASeR's bandit frozen, never used to
    choose anything."""
    off_headline: tuple[str, ...] = ("gpqa",)
    """Tasks reported but left out of the headline mean (GPQA is chance at 135M)."""
    task_items: dict[str, int] = field(default_factory=dict)
    """Items for particular tasks instead of `items_per_task` (e.g. {"gpqa": 100})."""
    pilot: bool = False
    """Only the per-task RM table (is there anything to select?), no strategies."""
    seed: int = 0
    """Seeds item sampling, orderings, LinUCB and the random-RM baseline."""
    greedy: bool = True
    noise_rm: bool = True
    """Add an RM that returns noise and report each strategy's drop."""
    late_rm: str | None = None
    """The RM added midway through the stream; default: the best single RM in hindsight."""
    concurrency: int = 8
    """Items whose generation runs at once (vLLM batches them)."""
    alphas: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    """LinUCB widths of the settings ablation (on the stream; the headline uses the
    settings' alpha)."""
    ablation_warmups: tuple[int, ...] = (0, 1, 2, 4)
    """Warm-up tries per RM and kind of query in the settings ablation."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("items_per_task", "n", "max_tokens", "orderings", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.tasks and not self.prompts_file:
            raise ValueError("nothing to evaluate: give tasks and/or a prompts file")
        if not 0 < self.heldout_share < 1:
            raise ValueError(f"heldout_share must be in (0, 1), got {self.heldout_share}")
        for task, count in self.task_items.items():
            if count < 1:
                raise ValueError(f"items for {task} must be >= 1, got {count}")
        if not (0 <= self.temperature <= 2 and 0 < self.top_p <= 1):
            raise ValueError("temperature must be in [0, 2] and top_p in (0, 1]")
        unknown = [t for t in self.tasks if t not in eval_data.TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(eval_data.TASKS)}")


@dataclass(frozen=True)
class EvalItem:
    task: str
    """The task name the report groups by (`arithmetic`, ..., or `user`/`user:<task>`)."""
    item: PromptItem
    kind: str
    prompt: str
    question: str
    documents: list[str]
    truncated: bool

    @property
    def query(self) -> Query:
        # The answer format as a hint, as a serving request may send it; never the reference.
        return Query(
            self.question, self.prompt, self.documents, self.item.task or KIND_TASK[self.kind]
        )


class EvalError(RuntimeError):
    """The evaluation could not run (a failing RM or engine); the message says where."""


# -- on-disk cache ----------------------------------------------------------------------------
class Cache:
    """JSON files keyed by the sha256 of a canonical JSON key, written atomically.

    A run that stops half-way leaves every finished entry behind, so the next run resumes.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0

    @staticmethod
    def digest(key: dict[str, Any]) -> str:
        blob = json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, kind: str, digest: str) -> Path:
        assert self.root is not None
        return self.root / kind / digest[:2] / f"{digest}.json"

    def get(self, kind: str, digest: str) -> dict[str, Any] | None:
        if self.root is None:
            self.misses += 1
            return None
        path = self._path(kind, digest)
        try:
            value: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, or a torn file from a killed run
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, kind: str, digest: str, value: dict[str, Any]) -> None:
        if self.root is None:
            return
        path = self._path(kind, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


# -- the noise RM (robustness) ----------------------------------------------------------------
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


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=True)


@dataclass
class Collected:
    items: list[EvalItem]
    generations: list[Generation]
    greedy: list[Generation] | None
    table: Table
    noise_scores: np.ndarray | None
    stats: dict[str, Any]


def _gen_json(g: Generation, seconds: float) -> dict[str, Any]:
    return {
        "completions": [asdict(c) for c in g.completions],
        "prompt_tokens": g.prompt_tokens,
        "seconds": seconds,
    }


def _gen_from(d: dict[str, Any]) -> Generation:
    from laser.server.engine_api import Completion

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
        reward_models = Services(engine, encoder).reward_models(settings.reward_models)
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
            return _gen_from(hit), key
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
    with _progress(len(items), f"sampling n={config.n}", config.progress) as bar:
        gens = await asyncio.gather(*(generate(it, sampling, "gen", bar) for it in items))
    stats["sample_seconds"] = time.perf_counter() - t0
    greedy = None
    if config.greedy:
        t0 = time.perf_counter()
        with _progress(len(items), "greedy decoding", config.progress) as bar:
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
    with _progress(n_items * len(reward_models), "scoring", config.progress) as bar:
        for name in reward_models:
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


# -- the whole evaluation ---------------------------------------------------------------------
def analyse(col: Collected, config: EvalConfig, settings: Settings) -> dict[str, Any]:
    """The stream / held-out protocol (`protocol.py`): LASeR learns on the stream, every
    strategy is scored on the held-out split; CIs, regret, RM shares, cost, robustness and the
    settings ablation."""
    from laser.server.evaluation import protocol as pr
    from laser.server.evaluation import report as rep

    t = col.table
    tasks = t.tasks
    keep = [task for task in dict.fromkeys(tasks) if task not in config.off_headline] or list(
        dict.fromkeys(tasks)
    )
    split = pr.split_items(tasks, config.heldout_share, config.seed)
    orders = pr.stream_orders(split, config.orderings, config.seed)
    held = split.heldout
    b = settings.bandit
    laser = LaserSettings(alpha=b.alpha, ridge=b.ridge, epsilon=b.epsilon, warmup=b.warmup)

    with _progress(1, "strategies", config.progress) as bar:
        lr = pr.run_laser_split(t, split, orders, config.seed, laser, keep)
        values, chosen = pr.heldout_values(t, split, lr.heldout, keep)
        bar.update(1)
    seconds = {rm: t.score_seconds.get(rm, np.zeros(len(tasks))) for rm in t.rms}
    laser_ms = 1000 * float(
        np.mean(
            [
                np.mean([seconds[a][i] for i, a in zip(held, arms, strict=True)])
                for arms in lr.heldout_arms
            ]
        )
    )
    all_ms = {rm: 1000 * float(seconds[rm][held].mean()) for rm in t.rms}
    cost = {
        "laser": laser_ms,
        "random_rm": float(np.mean(list(all_ms.values()))),
        "best_single": all_ms[chosen["best_single_rm"]],
        **{f"rm:{rm}": ms for rm, ms in all_ms.items()},
        "ensemble_mean": sum(all_ms.values()),
        "ensemble_vote": sum(all_ms.values()),
    }
    calls = {
        **{n: 1 for n in ("laser", "random_rm", "best_single", *(f"rm:{r}" for r in t.rms))},
        "ensemble_mean": len(t.rms),
        "ensemble_vote": len(t.rms),
        "first_sample": 0,
        "greedy": 0,
    }
    strategies: dict[str, Any] = {}
    for name, v in values.items():
        strategies[name] = {
            "label": rep.label(name, chosen),
            "heldout": round(pr.macro(v, held, tasks, keep), 4),
            "heldout_all_tasks": round(pr.macro(v, held, tasks, list(dict.fromkeys(tasks))), 4),
            "per_task": {k: round(x, 4) for k, x in pr.per_task(v, held, tasks).items()},
            "stream": round(pr.macro(v, split.stream, tasks, keep), 4),
            "rm_calls_per_item": calls.get(name),
            "rm_ms_per_item": None if name not in cost else round(cost[name], 2),
        }
    strategies["laser"]["heldout_orderings"] = rep.stats(lr.heldout_macro)
    strategies["laser"]["stream"] = round(float(np.mean(lr.stream_macro)), 4)
    strategies["laser"]["stream_orderings"] = rep.stats(lr.stream_macro)
    baselines = [n for n in values if n not in ("laser", "oracle", "oracle_rm_query")]
    ci = {
        n: pr.paired_bootstrap(values["laser"] - values[n], held, tasks, keep, seed=config.seed)
        for n in baselines
    }

    # Along the stream: regret against the best RM per task (chosen on the stream), and which
    # RM LASeR used for each task as the stream went on.
    ref = np.array([values["oracle_rm_task"][o] for o in orders])
    single = np.array([values["best_single"][o] for o in orders])
    rnd = np.array([values["random_rm"][o] for o in orders])
    regret = {
        "laser": pr.regret_curve(lr.stream_steps, ref),
        "random_rm": pr.regret_curve(rnd, ref),
        "best_single": pr.regret_curve(single, ref),
    }
    per_task_stream = len(split.stream) // max(1, len(dict.fromkeys(tasks)))
    window = max(5, per_task_stream // 10)
    shares = pr.shares_over_time(t, orders, lr.stream_arms, window)
    usage = {
        task: {rm: float(np.mean(v)) for rm, v in by_rm.items()} for task, by_rm in shares.items()
    }
    heldout_usage: dict[str, dict[str, float]] = {}
    arr = np.asarray(tasks)
    for task in dict.fromkeys(tasks):
        pos = [j for j, i in enumerate(held) if arr[i] == task]
        heldout_usage[task] = {
            rm: round(float(np.mean([[arms[j] == rm for j in pos] for arms in lr.heldout_arms])), 4)
            for rm in t.rms
        }

    robustness: dict[str, Any] = {}
    tables = {"base": t}
    if col.noise_scores is not None:
        noisy = t.with_scores({"noise": col.noise_scores}, {"noise": np.zeros(len(tasks))})
        tables["noise"] = noisy
        nlr = pr.run_laser_split(noisy, split, orders, config.seed, laser, keep)
        nvalues, nchosen = pr.heldout_values(noisy, split, nlr.heldout, keep)
        robustness["noise"] = {
            n: {
                "without": round(pr.macro(values[n], held, tasks, keep), 4),
                "with": round(pr.macro(nvalues[n], held, tasks, keep), 4),
                "change": round(
                    pr.macro(nvalues[n], held, tasks, keep)
                    - pr.macro(values[n], held, tasks, keep),
                    4,
                ),
            }
            for n in ("laser", "random_rm", "best_single", "ensemble_mean", "ensemble_vote")
        }
        robustness["noise"]["rm:noise"] = {
            "without": None,
            "with": round(pr.macro(nvalues["rm:noise"], held, tasks, keep), 4),
            "change": None,
        }
        robustness["noise_laser_share"] = round(
            float(np.mean([[a == "noise" for a in arms] for arms in nlr.stream_arms])), 4
        )
        robustness["noise_best_single"] = nchosen["best_single_rm"]
    late = [config.late_rm or chosen["best_single_rm"]]
    if "noise" in tables:
        late.append("noise")
    at = len(split.stream) // 2
    midway = []
    for rm in late:
        table = tables["noise"] if rm == "noise" else t
        if rm not in table.rms:
            raise ValueError(f"late_rm {rm!r} is not one of the RMs {t.rms}")
        if len(table.rms) < 2:
            continue
        mid = pr.run_laser_split(
            table, split, orders, config.seed, laser, keep, add_midway=(rm, at)
        )
        start = nlr if rm == "noise" else lr
        never = pr.run_laser_split(
            table, split, orders, config.seed, laser, keep, rms=[r for r in table.rms if r != rm]
        )
        q = (3 * len(split.stream)) // 4
        midway.append(
            {
                "rm": rm,
                "added_at": at,
                "share_after": round(
                    float(np.mean([[a == rm for a in arms[at:]] for arms in mid.stream_arms])), 4
                ),
                "share_last_quarter": round(
                    float(np.mean([[a == rm for a in arms[q:]] for arms in mid.stream_arms])), 4
                ),
                "heldout": {
                    "midway": round(float(np.mean(mid.heldout_macro)), 4),
                    "from_start": round(float(np.mean(start.heldout_macro)), 4),
                    "never": round(float(np.mean(never.heldout_macro)), 4),
                },
            }
        )
    robustness["midway"] = midway

    with _progress(1, "settings ablation (stream only)", config.progress) as bar:
        grid = pr.ablation(
            t,
            orders,
            config.seed,
            laser,
            keep,
            contexts=["features", *t.context_variants, "bias"],
            warmups=config.ablation_warmups,
            alphas=config.alphas,
        )
        bar.update(1)

    task_info = {}
    for task in dict.fromkeys(tasks):
        kinds = {it.kind for it in col.items if it.task == task}
        task_info[task] = {
            "items": sum(1 for x in tasks if x == task),
            "stream": int(sum(1 for i in split.stream if tasks[i] == task)),
            "heldout": int(sum(1 for i in held if tasks[i] == task)),
            "metric": "F1" if kinds == {"span"} else "accuracy",
            "headline": task in keep,
        }
    return {
        "model": col.stats.get("model", ""),
        "rms": t.rms,
        "n_items": len(tasks),
        "tasks": task_info,
        "headline_tasks": keep,
        "context_dim": int(t.contexts.shape[1]),
        "context": settings.featurizer.context,
        "laser": asdict(laser),
        "chosen_on_stream": chosen,
        "strategies": strategies,
        "ci": ci,
        "regret": regret,
        "shares_over_time": {"window": window, "by_task": shares},
        "laser_stream_usage": usage,
        "laser_heldout_usage": heldout_usage,
        "robustness": robustness,
        "ablation": grid,
        "mean_candidate_quality": round(float(t.quality.mean()), 4),
        "heldout_items": held.tolist(),
    }


def pilot_table(col: Collected) -> dict[str, Any]:
    """Per task: each RM's accuracy/F1 when it picks, the oracle and no reranking: is there
    anything to select, before paying for a full run?"""
    from laser.server.evaluation import protocol as pr

    t = col.table
    idx = np.arange(len(t.tasks))
    rows: dict[str, dict[str, float]] = {}
    values = {f"rm:{rm}": pr.pick_quality(t, rm) for rm in t.rms}
    values.update(pr.ensemble_quality(t))
    values["first_sample"] = t.quality[:, 0]
    values["oracle_rm_query"] = np.max([pr.pick_quality(t, rm) for rm in t.rms], axis=0)
    values["oracle"] = t.quality.max(axis=1)
    for name, v in values.items():
        rows[name] = {k: round(x, 4) for k, x in pr.per_task(v, idx, t.tasks).items()}
    return {"items": len(t.tasks), "rows": rows, "stats": col.stats}


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
