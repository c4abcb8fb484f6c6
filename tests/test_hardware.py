"""engine.dtype = "auto" resolved per machine (pure functions; no engine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from laser.server.engines.hardware import read_cpu_flags, resolve_dtype

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}
AMX = AVX2_ONLY | {"avx512f", "amx_bf16", "amx_tile", "amx_int8"}


def test_cpu_without_native_bf16_gets_float32() -> None:
    dtype, reason = resolve_dtype("auto", cpu_flags=AVX2_ONLY, on_gpu=False)
    assert dtype == "float32"
    assert reason == "CPU without native bf16: flags lack avx512_bf16/amx_bf16"


def test_avx512_bf16_gets_bfloat16() -> None:
    dtype, reason = resolve_dtype("auto", cpu_flags=AVX512_BF16, on_gpu=False)
    assert dtype == "bfloat16"
    assert "avx512_bf16" in reason


@pytest.mark.parametrize("flags", [AMX, AVX2_ONLY | {"amx_bf16"}, AVX2_ONLY | {"amx_tile"}])
def test_amx_gets_bfloat16(flags: set[str]) -> None:
    dtype, reason = resolve_dtype("auto", cpu_flags=flags, on_gpu=False)
    assert dtype == "bfloat16"
    assert "amx" in reason


def test_unknown_cpu_flags_get_float32() -> None:
    assert resolve_dtype("auto", cpu_flags=None, on_gpu=False)[0] == "float32"
    assert resolve_dtype("auto", cpu_flags=set(), on_gpu=False)[0] == "float32"


@pytest.mark.parametrize("flags", [None, AVX2_ONLY, AMX])
def test_gpu_keeps_auto(flags: set[str] | None) -> None:
    dtype, reason = resolve_dtype("auto", cpu_flags=flags, on_gpu=True)
    assert dtype == "auto"
    assert "GPU" in reason


@pytest.mark.parametrize("requested", ["float16", "float32", "bfloat16", "half"])
@pytest.mark.parametrize("on_gpu", [False, True])
def test_explicit_dtype_is_kept(requested: str, on_gpu: bool) -> None:
    for flags in (AVX2_ONLY, AMX, None):
        dtype, reason = resolve_dtype(requested, cpu_flags=flags, on_gpu=on_gpu)
        assert dtype == requested
        assert "explicit" in reason


def test_auto_is_case_insensitive() -> None:
    assert resolve_dtype("AUTO", cpu_flags=AVX2_ONLY, on_gpu=False)[0] == "float32"


CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_2 avx avx2 fma
bugs\t\t: sysret_ss_attrs

processor\t: 1
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse4_2 avx avx2 fma
"""


def test_read_cpu_flags_from_a_cpuinfo_file(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    flags = read_cpu_flags(path)
    assert flags == {"fpu", "sse4_2", "avx", "avx2", "fma"}
    assert resolve_dtype("auto", cpu_flags=flags, on_gpu=False)[0] == "float32"


def test_read_cpu_flags_sees_bf16(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    flags = read_cpu_flags(str(path))
    assert {"avx512_bf16", "amx_bf16", "amx_tile"} <= flags
    assert resolve_dtype("auto", cpu_flags=flags, on_gpu=False)[0] == "bfloat16"


def test_read_cpu_flags_missing_or_flagless_file_is_empty(tmp_path: Path) -> None:
    assert read_cpu_flags(tmp_path / "absent") == set()
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # no x86 `flags` line
    assert read_cpu_flags(arm) == set()


def test_cpu_thread_binding_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from laser.server.config import load_settings
    from laser.server.engines.vllm_engine import apply_cpu_binding, resolve_cpu_binding

    # auto: the whole of a small machine; vLLM's own choice (a core reserved) on a big one.
    assert resolve_cpu_binding("auto", 2) == "all" and resolve_cpu_binding("auto", 4) == "all"
    assert resolve_cpu_binding("auto", 64) == "vllm"
    assert resolve_cpu_binding("0-3", 2) == "0-3"
    assert load_settings().engine.cpu_threads_bind == "vllm"  # the default: vLLM's own
    for var in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert apply_cpu_binding("auto") == "vllm"  # nothing set: vLLM decides
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert apply_cpu_binding("auto") == "all"  # every core, none reserved
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert load_settings(engine={"cpu_threads_bind": "0-3|4-7"}).engine.cpu_threads_bind
    with pytest.raises(ValueError):
        load_settings(engine={"cpu_threads_bind": "0-1; rm -rf /"})
