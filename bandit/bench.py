"""Micro-benchmark: LinUCB select + update time, one core.

    python -m laser.bandit.bench            # d in {64, 384, 4096}, K in {2, 4, 8, 16}
    python -m laser.bandit.bench --dims 64 384 --arms 8 --dtypes float64 float32

Prints a Markdown table. The "re-invert" column times the reference code's way (solve A
every step instead of Sherman-Morrison) at the same d and K, in the same run, and the
ratio column compares the two.

The "bound" column is what memory traffic alone costs a step: select reads the K stacked
`A^-1` matrices once and update reads and writes one of them, (K + 2) d^2 numbers, at the
read bandwidth measured in the same run over a buffer of the stack's size (so the cache
level the stack lives in counts). No implementation of exact LinUCB can beat it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

_ONE_CORE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _time_per_call(fn: Callable[[], object], budget_s: float, min_calls: int = 3) -> float:
    """Median-free simple estimate: total time / calls, after one warm-up call."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < budget_s:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def _read_bandwidth(nbytes: int, dtype: str, budget_s: float) -> float:
    """Bytes per second a dot product streams through a buffer of `nbytes`."""
    import numpy as np

    buf = np.ones(max(1, nbytes // np.dtype(dtype).itemsize), dtype=dtype)
    return buf.nbytes / _time_per_call(lambda: np.dot(buf, buf), budget_s / 4)


def _cell(d: int, k: int, dtype: str, budget_s: float) -> dict[str, float | str]:
    import numpy as np

    from laser.bandit import LinUCB, LinUCBConfig

    contexts = np.random.default_rng(0).normal(size=(64, d)) / np.sqrt(d)
    bandit = LinUCB(LinUCBConfig(dim=d, alpha=0.1, dtype=dtype), [f"rm{i}" for i in range(k)])
    step = iter(range(10**12))

    def select_update() -> None:
        x = contexts[next(step) % 64]
        sel = bandit.select(x)
        bandit.update(sel.arm, x, 0.5)

    # The reference code's way: keep A, invert it per arm per step.
    a = np.stack([np.eye(d)] * k)
    b = np.zeros((k, d))

    def reinvert() -> None:
        x = contexts[next(step) % 64]
        inv = np.linalg.inv(a)
        ucb = (inv @ b[..., None])[..., 0] @ x + 0.1 * np.sqrt((inv @ x) @ x)
        j = int(np.argmax(ucb))
        a[j] += np.outer(x, x)
        b[j] += 0.5 * x

    t_sm = _time_per_call(select_update, budget_s)
    # Re-inverting 4096 x 4096 matrices takes seconds per step: skip those cells.
    t_inv = _time_per_call(reinvert, budget_s) if d <= 1024 else float("nan")
    itemsize = np.dtype(dtype).itemsize
    bandwidth = _read_bandwidth(k * d * d * itemsize, dtype, budget_s)
    bound = (k + 2) * d * d * itemsize / bandwidth
    return {
        "d": d,
        "K": k,
        "dtype": dtype,
        "sm_us": t_sm * 1e6,
        "inv_us": t_inv * 1e6,
        "bound_us": bound * 1e6,
        "gb_s": bandwidth / 1e9,
    }


def run(
    dims: list[int], arms: list[int], budget_s: float, dtypes: tuple[str, ...] = ("float64",)
) -> list[dict[str, float | str]]:
    rows = []
    for d in dims:
        for k in arms:
            for dtype in dtypes:
                rows.append(_cell(d, k, dtype, budget_s))
                us = rows[-1]["sm_us"]
                print(f"  d={d:5d} K={k:2d} {dtype}: {us:10.1f} us", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 384, 4096])
    parser.add_argument("--arms", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--dtypes", nargs="+", default=["float64"], choices=["float64", "float32"])
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per cell")
    args = parser.parse_args(argv)
    if any(os.environ.get(k) != v for k, v in _ONE_CORE.items()):
        # BLAS reads its thread count once, at import: re-exec with one core pinned.
        os.environ.update(_ONE_CORE)
        argv = sys.argv[1:] if argv is None else argv
        os.execv(sys.executable, [sys.executable, "-m", "laser.bandit.bench", *argv])
    rows = run(args.dims, args.arms, args.budget, tuple(args.dtypes))
    print(
        "| d | K | dtype | select+update (us) | memory bound (us) | x bound | read GB/s "
        "| re-invert per step (us) | speed-up |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        sm, inv_us = float(r["sm_us"]), float(r["inv_us"])
        inv = "skipped" if inv_us != inv_us else f"{inv_us:.1f}"
        ratio = "" if inv_us != inv_us else f"{inv_us / sm:.1f}x"
        bound = float(r["bound_us"])
        print(
            f"| {r['d']} | {r['K']} | {r['dtype']} | {sm:.1f} | {bound:.1f} | {sm / bound:.1f}x "
            f"| {float(r['gb_s']):.0f} | {inv} | {ratio} |"
        )


if __name__ == "__main__":
    main()
