"""/generate latency on the embedded default at n = 1, 4, 8, and the server's own overhead.

    .venv/bin/python bench/serve_latency.py [--requests 8] [--max-tokens 64]

Starts `laser-server serve` (the README's default) on a free loopback port, sends sequential
requests, and prints a Markdown table. "Overhead" is everything except engine generation
and RM scoring: client wall time minus the server's `generate` and `score` stages (HTTP,
JSON, prompt templating, featurizing beyond the generation it overlaps, bandit select,
SQLite commit).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "What is 23 + 19? Answer with a number.",
    "Name three primary colors.",
    "Explain in one sentence why the sky is blue.",
]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=8, help="requests per n")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 4, 8])
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.mkdtemp(prefix="laser-bench-")
    env = {**os.environ, "LASER_CACHE_DIR": str(ROOT / ".cache" / "models")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "laser.server.cli",
            "serve",
            "--data-dir",
            data,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        rows, overheads = [], []
        with httpx.Client(timeout=300) as client:
            for n in args.ns:
                wall, gen, score = [], [], []
                for i in range(args.requests):
                    body = {
                        "prompt": PROMPTS[i % len(PROMPTS)],
                        "n": n,
                        "max_tokens": args.max_tokens,
                    }
                    t = time.perf_counter()
                    r = client.post(url + "/generate", json=body)
                    dt = (time.perf_counter() - t) * 1000
                    r.raise_for_status()
                    tm = r.json()["timings_ms"]
                    wall.append(dt)
                    gen.append(tm["generate"])
                    score.append(tm["score"])
                    overheads.append(dt - tm["generate"] - tm["score"])
                    print(f"  n={n} #{i}: {dt:.0f} ms", file=sys.stderr, flush=True)
                rows.append(
                    (n, statistics.median(wall), statistics.median(gen), statistics.median(score))
                )
        print("| n | /generate p50 (ms) | generation p50 (ms) | RM scoring p50 (ms) |")
        print("|---:|---:|---:|---:|")
        for n, w, g, sc in rows:
            print(f"| {n} | {w:.0f} | {g:.0f} | {sc:.0f} |")
        print(
            f"\nserver overhead (all but generation and scoring), {len(overheads)} requests: "
            f"p50 {pct(overheads, 0.5):.1f} ms, p99 {pct(overheads, 0.99):.1f} ms"
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


if __name__ == "__main__":
    main()
