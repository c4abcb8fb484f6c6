"""How fast feedback given to one replica reaches the other: two `laser-server serve`
processes sharing a private PostgreSQL (started here, on 127.0.0.1), feedback sent to both
in turn at a steady rate, with and without generation load on both replicas. For each
feedback, the delay is from its 200 on one replica to the moment the OTHER replica's
`GET /bandit` shows it applied (`feedback_seq`); p50/p99/max per condition.

    .venv/bin/python bench/replicas.py --out bench/replicas.json     # ~4 minutes

Replica A runs the embedded vLLM engine; replica B uses A as its (remote) engine, so one
machine holds one model. Not a timed test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _serving import wait_healthy  # bench/_serving.py

ROOT = Path(__file__).resolve().parents[1]
RMS = ("arith", "agreement", "relevance")


def _config(path: Path, data: Path, port: int, store: str, engine: str = "") -> Path:
    from laser.server import assets

    cache = ROOT / ".cache" / "models"
    text = f'data_dir = "{data}"\nport = {port}\n'
    if cache.is_dir():
        text += f'cache_dir = "{cache}"\n'
    if engine:
        model = assets.embedded_model(cache if cache.is_dir() else data / "cache")
        text += (
            f'[engine]\nkind = "remote"\nurl = "{engine}"\n'
            f'served_name = "{assets.EMBEDDED_MODEL_NAME}"\ntokenizer = "{model}"\n'
        )
    text += f'[store]\nurl = "{store}"\npoll_interval_s = 0.1\n'
    text += "".join(f'[[reward_models]]\nname = "{r}"\nkind = "{r}"\n' for r in RMS)
    path.write_text(text)
    return path


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).parent / "laser-server")
    return subprocess.Popen(
        [exe, "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )


async def _condition(
    urls: list[str], ids: list[str], rate: float, seconds: float, gen_load: int
) -> dict[str, Any]:
    """Feedback alternating between the replicas at `rate` per second for `seconds`, while
    `gen_load` generation loops per replica keep them busy; the other replica's applied
    sequence number is polled every 10 ms."""
    seen_at: list[dict[int, float]] = [{}, {}]  # per replica: seq -> when first seen applied
    stop = asyncio.Event()
    acks: list[tuple[int, int, float]] = []  # (replica that acked, seq, time)

    async with httpx.AsyncClient(timeout=120) as c:

        async def watch(k: int) -> None:
            last = 0
            while not stop.is_set():
                s = int((await c.get(urls[k] + "/bandit")).json()["feedback_seq"])
                now = time.monotonic()
                for q in range(last + 1, s + 1):
                    seen_at[k].setdefault(q, now)
                last = max(last, s)
                await asyncio.sleep(0.01)

        async def generate(k: int) -> None:
            i = 0
            while not stop.is_set():
                body = {"prompt": f"What is {i} + {k}?", "n": 2, "max_tokens": 8}
                await c.post(urls[k] + "/generate", json=body)
                i += 1

        tasks = [asyncio.create_task(watch(k)) for k in (0, 1)]
        tasks += [asyncio.create_task(generate(k)) for k in (0, 1) for _ in range(gen_load)]
        await asyncio.sleep(1.0)
        t_end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < t_end and ids:
            k = n % 2
            r = await c.post(urls[k] + "/feedback", json={"id": ids.pop(), "reward": 0.5})
            acks.append((k, int(r.json()["seq"]), time.monotonic()))
            n += 1
            await asyncio.sleep(max(0.0, 1.0 / rate))
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    delays = [
        seen_at[1 - k][s] - t for k, s, t in acks if s in seen_at[1 - k]
    ]  # max(0, ...) not taken: a negative value would mean the clocks lie
    missed = sum(1 for k, s, _ in acks if s not in seen_at[1 - k])
    d = np.array(delays) * 1000
    return {
        "feedback": len(acks),
        "rate_per_s": rate,
        "generation_loops_per_replica": gen_load,
        "not_seen": missed,
        "delay_ms": {
            "p50": float(np.percentile(d, 50)),
            "p99": float(np.percentile(d, 99)),
            "max": float(d.max()),
        },
    }


async def _decisions(url: str, n: int) -> list[str]:
    async with httpx.AsyncClient(timeout=120) as c:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> str:
            async with sem:
                body = {"prompt": f"Name {i} things.", "n": 1, "max_tokens": 1}
                r = await c.post(url + "/generate", json=body)
                return str(r.json()["id"])

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def main(argv: list[str] | None = None) -> None:
    from tests.pg_local import LocalPostgres, private_root

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=20.0, help="feedback per second")
    p.add_argument("--seconds", type=float, default=30.0, help="per condition")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="laser-replicas-"))
    pg = LocalPostgres(private_root())
    pg.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        store = pg.create_database("laser")
        ports = [_free() for _ in range(2)]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        a = _serve(_config(root / "a.toml", root / "a", ports[0], store), root / "a.log")
        procs.append(a)
        wait_healthy(urls[0], a, f"replica at {urls[0]} did not start")
        b_cfg = _config(root / "b.toml", root / "b", ports[1], store, engine=urls[0])
        b = _serve(b_cfg, root / "b.log")
        procs.append(b)
        wait_healthy(urls[1], b, f"replica at {urls[1]} did not start")
        per = int(args.rate * args.seconds) + 10
        print(f"making {2 * per} decisions ...", file=sys.stderr)
        ids = asyncio.run(_decisions(urls[0], 2 * per))
        results = []
        for load in (0, 2):
            chunk, ids = ids[:per], ids[per:]
            r = asyncio.run(_condition(urls, chunk, args.rate, args.seconds, load))
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
        out = {
            "machine": f"{os.cpu_count()} CPUs",
            "poll_interval_s": 0.1,
            "conditions": results,
            "command": "python bench/replicas.py " + " ".join(argv or sys.argv[1:]),
        }
        print(json.dumps(out, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(pg.root, ignore_errors=True)


def _free() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
