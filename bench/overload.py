"""Overload check: floods a real `laser-server serve` at many times its capacity and prints
how it answered (200 / 429 / other), refusal and answer latencies, and the server's memory
round after round. Not a timed test; numbers depend on the machine.

    .venv/bin/python bench/overload.py                 # capacity 2 + 3 queued, 3 x 60 requests
    .venv/bin/python bench/overload.py --rounds 5 --burst 120
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _serving import free_port, wait_healthy  # bench/_serving.py

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _round(url: str, burst: int, body: dict[str, object]) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=burst, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one() -> tuple[int, float]:
            t = time.perf_counter()
            r = await client.post(url + "/generate", json=body)
            return r.status_code, (time.perf_counter() - t) * 1000

        return list(await asyncio.gather(*(one() for _ in range(burst))))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=3)
    ap.add_argument("--burst", type=int, default=60, help="concurrent requests per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    port, data = free_port(), Path(tempfile.mkdtemp(prefix="laser-overload-"))
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LASER_CACHE_DIR": str(ROOT / ".cache" / "models"),
        "LASER_ENGINE__MAX_MODEL_LEN": "1024",
        "LASER_MAX_CONCURRENT": str(args.max_concurrent),
        "LASER_MAX_QUEUE": str(args.max_queue),
    }
    cmd = [sys.executable, "-m", "laser.server.cli", "serve", "--data-dir", str(data)]
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(url, proc, f"server did not start; see {data / 'server.log'}")
        body = {"prompt": "What is 2 + 3?", "n": 2, "max_tokens": 8}
        capacity = args.max_concurrent + args.max_queue
        print(
            f"capacity {args.max_concurrent} running + {args.max_queue} queued; "
            f"{args.rounds} rounds of {args.burst} concurrent /generate "
            f"({args.burst / capacity:.0f}x capacity)"
        )
        print(f"server RSS before: {_rss_mib(proc.pid):.0f} MiB")
        print("| round | 200 | 429 | other | 429 p50 / p99 (ms) | 200 p50 / p99 (ms) | RSS (MiB) |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for k in range(args.rounds):
            results = asyncio.run(_round(url, args.burst, body))
            ok = [ms for code, ms in results if code == 200]
            refused = [ms for code, ms in results if code == 429]
            other = len(results) - len(ok) - len(refused)
            print(
                f"| {k + 1} | {len(ok)} | {len(refused)} | {other} | "
                f"{_pct(refused, 0.5):.1f} / {_pct(refused, 0.99):.1f} | "
                f"{_pct(ok, 0.5):.0f} / {_pct(ok, 0.99):.0f} | {_rss_mib(proc.pid):.0f} |"
            )
        adm = httpx.get(url + "/health", timeout=30).json()["admission"]
        after = httpx.post(url + "/generate", json=body, timeout=300).status_code
        print(
            f"after the load: active {adm['active']}, waiting {adm['waiting']}; "
            f"a normal request -> {after}"
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)


if __name__ == "__main__":
    main()
