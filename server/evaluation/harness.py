"""The evaluation harness: sample once, score once, then let every strategy choose.

1. Items: built-in tasks (`laser.server.evaluation.data`) and/or a user JSONL.
2. Prompts are rendered exactly as serving renders them (`Reranker.prepare`: chat template,
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
from laser.server.engine import Engine, Generation, Sampling
from laser.server.evaluation import data as eval_data
from laser.server.evaluation.metrics import KIND_TASK, grade, item_kind
from laser.server.evaluation.strategies import (
    LaserSettings,
    Run,
    Table,
    orderings,
    run_all,
    run_fixed,
    run_laser,
)
from laser.server.featurize import Featurizer, SentenceEncoder
from laser.server.protocol import GenerateRequest
from laser.server.rewards import Query, RewardModel, build_reward_model

log = logging.getLogger("laser.server")

CACHE_VERSION = 1


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. Invalid values raise `ValueError`.

    >>> EvalConfig(tasks=["arithmetic", "longqa"], items_per_task=30, n=8).orderings
    3
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
    orderings: int = 3
    """Seeded random item orders the online strategies run over (mean and spread)."""
    seed: int = 0
    """Seeds item sampling, orderings, LinUCB and the random-RM baseline."""
    greedy: bool = True
    noise_rm: bool = True
    """Add an RM that returns noise and report each strategy's drop."""
    late_rm: str | None = None
    """The RM added midway through the stream; default: the best single RM in hindsight."""
    concurrency: int = 8
    """Items whose generation runs at once (vLLM batches them)."""
    alphas: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
    """LinUCB widths for the sensitivity sweep (the headline uses the settings' alpha)."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("items_per_task", "n", "max_tokens", "orderings", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.tasks and not self.prompts_file:
            raise ValueError("nothing to evaluate: give tasks and/or a prompts file")
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


# -- collection -------------------------------------------------------------------------------
def load_items(config: EvalConfig) -> list[tuple[str, PromptItem]]:
    """(task name, item) for every built-in task and the user's JSONL."""
    out: list[tuple[str, PromptItem]] = []
    for k, task in enumerate(config.tasks):
        for item in eval_data.build_task(task, config.items_per_task, seed=config.seed + k):
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
    from laser.server.engine import Completion

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
    from laser.server.pipeline import Reranker
    from laser.server.store import Store

    stats: dict[str, Any] = {"engine_generate_calls": 0, "rm_score_calls": 0}
    featurizer = Featurizer(encoder, settings.featurizer.dim, settings.featurizer.seed)
    if reward_models is None:
        reward_models = {
            spec.name: build_reward_model(spec, engine=engine, encoder=encoder)
            for spec in settings.reward_models
        }
    # What identifies an RM in the score cache: its config entry when it has one.
    specs: dict[str, RewardModelSpec] = {s.name: s for s in settings.reward_models}
    rm_ids = {
        name: specs[name].model_dump() if name in specs else {"name": name, "kind": rm.kind}
        for name, rm in reward_models.items()
    }

    # Prompts exactly as serving renders them (chat template, document template, truncation).
    store = Store(":memory:")
    try:
        reranker = Reranker(settings, engine, featurizer, reward_models, store)
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
                prep = reranker.prepare(req, config.max_tokens)
            except Exception as exc:
                raise DataError(f"item {item.id or item.prompt[:40]!r}: {exc}") from exc
            kind = item_kind(item)
            items.append(
                EvalItem(
                    task, item, kind, prep.prompt, prep.question, prep.documents, prep.truncated
                )
            )
    finally:
        store.close()
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
    contexts = featurizer.features_batch(
        [it.question for it in items], [bool(it.documents) for it in items]
    )
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
    )
    return Collected(items, [g for g, _ in gens], greedy, table, noise, stats)


# -- the whole evaluation ---------------------------------------------------------------------
def analyse(
    col: Collected, config: EvalConfig, settings: Settings
) -> tuple[dict[str, Any], dict[str, list[Run]]]:
    """Run every strategy, the robustness checks and the alpha sweep over collected data."""
    from laser.server.evaluation import report as rep

    t = col.table
    tasks = t.tasks
    n_items = len(tasks)
    orders = orderings(n_items, config.orderings, config.seed)
    b = settings.bandit
    laser = LaserSettings(alpha=b.alpha, ridge=b.ridge, epsilon=b.epsilon)
    with _progress(1, "strategies", config.progress) as bar:
        runs = run_all(t, orders, config.seed, laser)
        bar.update(1)
    summary = rep.summarise(runs, tasks)
    singles = {r: summary[f"rm:{r}"]["overall"]["mean"] for r in t.rms}
    best_single = max(singles, key=lambda r: singles[r])
    fixed = {r: run_fixed(t, r) for r in t.rms}
    best_per_task = {
        task: max(t.rms, key=lambda r: rep.task_means(fixed[r], tasks)[task])
        for task in dict.fromkeys(tasks)
    }
    laser_mean = summary["laser"]["overall"]["mean"]
    ens = summary["ensemble_mean"]
    headline = {
        "laser_minus_best_single": round(laser_mean - singles[best_single], 4),
        "laser_minus_ensemble": round(laser_mean - ens["overall"]["mean"], 4),
        "laser_cost_share_of_ensemble": round(
            summary["laser"]["rm_ms_per_item"] / max(ens["rm_ms_per_item"], 1e-9), 4
        ),
    }

    robustness: dict[str, Any] = {}
    base_tables = {"base": t}
    if col.noise_scores is not None:
        noisy = t.with_scores({"noise": col.noise_scores}, {"noise": np.zeros(n_items)})
        base_tables["noise"] = noisy
        noise_runs = run_all(noisy, orders, config.seed, laser)
        robustness["noise"] = {}
        for name in rep.ordered(list(runs)):
            if name in rep.REFERENCE_ROWS or name not in noise_runs:
                continue
            without = float(np.mean([rep.macro(r, tasks) for r in runs[name]]))
            with_ = float(np.mean([rep.macro(r, tasks) for r in noise_runs[name]]))
            robustness["noise"][name] = {
                "without": round(without, 4),
                "with": round(with_, 4),
                "change": round(with_ - without, 4),
            }
        robustness["noise"]["rm:noise"] = {
            "without": None,
            "with": round(float(np.mean([rep.macro(r, tasks) for r in noise_runs["rm:noise"]])), 4),
            "change": None,
        }

    # An RM joining half-way: the best single RM (does LASeR pick it up?) and, when there is
    # one, the noise RM (does LASeR leave it alone?).
    late = [config.late_rm or best_single]
    if col.noise_scores is not None and "noise" not in late:
        late.append("noise")
    at = n_items // 2
    window = max(1, n_items // 12)
    midway = []
    for rm in late:
        table = base_tables["noise"] if rm == "noise" else t
        if rm not in table.rms:
            raise ValueError(f"late_rm {rm!r} is not one of the RMs {t.rms}")
        if len(table.rms) < 2:
            continue
        mids, starts, nevers = [], [], []
        for k, order in enumerate(orders):
            s = config.seed * 1000 + k
            mids.append(run_laser(table, order, s, laser, add_midway=(rm, at)))
            starts.append(run_laser(table, order, s, laser))
            others = [r for r in table.rms if r != rm]
            nevers.append(run_laser(table, order, s, laser, rms=others))

        def second_half(rs: list[Run]) -> float:
            return float(np.mean([r.quality[r.order[at:]].mean() for r in rs]))

        after = [[r.arms[i] == rm for i in r.order[at:]] for r in mids]
        last_q = [[r.arms[i] == rm for i in r.order[(3 * n_items) // 4 :]] for r in mids]
        midway.append(
            {
                "rm": rm,
                "added_at": at,
                "window": window,
                "share_after": round(float(np.mean([np.mean(a) for a in after])), 4),
                "share_last_quarter": round(float(np.mean([np.mean(a) for a in last_q])), 4),
                "share_by_window": [
                    round(float(v), 4)
                    for v in np.mean([rep.share_by_window(r, rm, window) for r in mids], axis=0)
                ],
                "second_half": {
                    "midway": round(second_half(mids), 4),
                    "from_start": round(second_half(starts), 4),
                    "never": round(second_half(nevers), 4),
                },
            }
        )
    robustness["midway"] = midway

    sweep = {}
    for alpha in config.alphas:
        cfg = LaserSettings(alpha=alpha, ridge=b.ridge, epsilon=b.epsilon)
        vals = [
            rep.macro(run_laser(t, o, config.seed * 1000 + k, cfg), tasks)
            for k, o in enumerate(orders)
        ]
        sweep[str(alpha)] = rep.stats(vals)
    bias = LaserSettings(alpha=b.alpha, ridge=b.ridge, epsilon=b.epsilon, context="bias")
    ablation = {
        "features": summary["laser"]["overall"],
        "bias": rep.stats(
            [
                rep.macro(run_laser(t, o, config.seed * 1000 + k, bias), tasks)
                for k, o in enumerate(orders)
            ]
        ),
    }

    curve_rows = ["laser", "random_rm", f"rm:{best_single}", "ensemble_mean", "oracle"]
    task_info = {}
    for task in dict.fromkeys(tasks):
        kinds = {it.kind for it in col.items if it.task == task}
        task_info[task] = {
            "items": sum(1 for x in tasks if x == task),
            "metric": "F1" if kinds == {"span"} else "accuracy",
        }
    report = {
        "model": col.stats.get("model", ""),
        "rms": t.rms,
        "n_items": n_items,
        "tasks": task_info,
        "context_dim": int(t.contexts.shape[1]),
        "laser": asdict(laser),
        "strategies": summary,
        "best_single_rm": best_single,
        "best_rm_per_task": best_per_task,
        "headline": headline,
        "laser_usage": rep.rm_usage(runs["laser"], tasks, t.rms),
        "curves": {n: rep.mean_curve(runs[n]) for n in curve_rows if n in runs},
        "robustness": robustness,
        "alpha_sweep": sweep,
        "context_ablation": ablation,
        "mean_candidate_quality": round(float(t.quality.mean()), 4),
    }
    return report, runs


def _items_jsonl(col: Collected, runs: dict[str, list[Run]], path: Path) -> None:
    t = col.table
    laser = runs["laser"][0]
    with path.open("w", encoding="utf-8") as f:
        for i, it in enumerate(col.items):
            row = {
                "id": it.item.id,
                "task": it.task,
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
                "laser_rm_first_ordering": laser.arms[i],
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
    """Collect (cached), analyse, and write the report into `out_dir`; returns the report.

    `cache_dir=None` disables the cache.
    """
    import platform

    from laser.server.evaluation import report as rep

    start = time.perf_counter()
    cache = Cache(Path(cache_dir) if cache_dir is not None else None)
    col = await collect(config, settings, engine, encoder, cache, reward_models)
    col.stats["model"] = engine.model_name
    report, runs = analyse(col, config, settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["config"] = {k: v for k, v in asdict(config).items() if k != "progress"}
    report["command"] = command
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    report["stats"] = col.stats
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    _items_jsonl(col, runs, out / "items.jsonl")
    report["files"] = [*rep.write(report, runs, out), "items.jsonl"]
    return report
