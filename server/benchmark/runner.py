"""`run_bench`: the server started in this process next to the in-process alternatives, then
every section of the bench (`sections.Bench`), and the results with the targets met or not.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from laser.server.benchmark.config import PROMPTS, BenchConfig, machine_info
from laser.server.benchmark.sections import Bench
from laser.server.benchmark.summary import overhead, targets

if TYPE_CHECKING:
    from laser.server.config import Settings
    from laser.server.services import Services


POLICY_RM = "policy-rm"


def with_policy_sized_rm(settings: Settings) -> Settings:
    """`settings` with an `hf` RM as large as the policy added (its weights under a fresh
    head, `assets.policy_sized_reward_model`): what an RM of the paper's kind costs. Settings
    that already have an `hf` or `vllm_pooling` RM are returned as they are."""
    from pathlib import Path

    from laser.server import assets
    from laser.server.config import RewardModelSpec

    if any(rm.kind in ("hf", "vllm_pooling") for rm in settings.reward_models):
        return settings
    model = Path(settings.engine.model) if settings.engine.model else None
    path = assets.policy_sized_reward_model(settings.model_cache, model)
    spec = RewardModelSpec(name=POLICY_RM, kind="hf", options={"path": str(path)})
    return settings.model_copy(update={"reward_models": [*settings.reward_models, spec]})


async def run_bench(
    config: BenchConfig, settings: Settings, services: Services | None = None
) -> dict[str, Any]:
    """Run every section on the running event loop; returns the results (JSON-ready).

    `services` (engine + encoder) are loaded from `settings` when not given, and shut down
    at the end only then.
    """
    import httpx

    from laser.server.api.app import build_app, http_server
    from laser.server.services import load_services

    own = services is None
    load_at_start = machine_info()["load_average_1m"]
    if config.portfolio == "realistic":
        settings = await asyncio.to_thread(with_policy_sized_rm, settings)
    svc = load_services(settings) if services is None else services
    bench = Bench(config, settings, svc)
    port = _free_port()
    server = http_server(build_app(settings, svc), settings, port=port)
    serving = asyncio.ensure_future(server.serve())
    t_start = time.perf_counter()
    try:
        await _started(server, serving)
        bench.url = f"http://127.0.0.1:{port}"
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=900, limits=limits) as http:
            bench.http = http
            await _warm_up(bench, config)
            sections = await _sections(bench, config)
    finally:
        server.should_exit = True
        await serving
        if own:
            svc.shutdown()
    return _results(config, settings, svc, bench, sections, load_at_start, t_start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _started(server: Any, serving: asyncio.Future[Any]) -> None:
    """Waits (up to 5 minutes) until the server accepts requests; raises if it stopped."""
    for _ in range(6000):
        if server.started or serving.done():
            break
        await asyncio.sleep(0.05)
    if serving.done():
        serving.result()
        raise RuntimeError("the server stopped during start-up")


async def _warm_up(bench: Bench, config: BenchConfig) -> None:
    """Every path once: first calls compile kernels and fill caches."""
    if config.naive_hf:
        await asyncio.to_thread(bench.load_hf)
    warm = PROMPTS[0]
    warm_prompt = bench.engine.render_chat([{"role": "user", "content": warm}])
    await bench.server({"prompt": warm, "n": config.n, "max_tokens": config.max_tokens})
    await bench.ensemble(warm, warm_prompt, config.n)
    if config.naive_hf:
        await bench.naive_hf(warm, warm_prompt, config.n, next(iter(bench.rms)))


@dataclass(frozen=True)
class _Sections:
    comparison: dict[str, Any]
    concurrency: list[dict[str, Any]]
    n_scaling: list[dict[str, Any]]
    doc_scaling: list[dict[str, Any]]
    external: list[tuple[float, dict[str, Any]]]
    """The overhead sample from a client in another process."""


async def _sections(bench: Bench, config: BenchConfig) -> _Sections:
    bench.log(f"comparison: {config.rounds} rounds, n={config.n}")
    comparison = await bench.comparison()
    bench.log("concurrency")
    levels = await bench.concurrency()
    bench.log("n scaling")
    ns = await bench.n_scaling()
    bench.log("document length")
    docs = await bench.doc_scaling()
    bench.log("overhead seen by a client in another process")
    external = await bench.external_client(20 if not config.quick else 3)
    return _Sections(comparison, levels, ns, docs, external)


def _results(
    config: BenchConfig,
    settings: Settings,
    svc: Services,
    bench: Bench,
    sections: _Sections,
    load_at_start: float,
    t_start: float,
) -> dict[str, Any]:
    """The results file: the run, every section, the likelihood sources and the targets."""
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
        "comparison": sections.comparison,
        "overhead": overhead(sections.external),
        "overhead_in_process_client": overhead(bench.sequential),
        "concurrency": sections.concurrency,
        "n_scaling": sections.n_scaling,
        "doc_scaling": sections.doc_scaling,
        "seconds": time.perf_counter() - t_start,
    }
    sources = getattr(svc.engine, "loglik_tokens", None)
    if sources is not None:  # the loglik RM: candidates scored from kept sampling logprobs
        free, passes = sources.get("from_generation", 0), sources.get("engine_passes", 0)
        results["loglik_sources"] = {
            "from_generation": free,
            "engine_passes": passes,
            "share_from_generation": free / (free + passes) if free + passes else None,
        }
    results["targets"] = targets(results)
    return results
