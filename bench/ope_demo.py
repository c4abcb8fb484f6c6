"""A real serving log for `laser-server ope`: starts `laser-server serve` on the embedded
default (with bandit.epsilon raised so other policies can be judged later), sends questions
from the evaluation tasks through `laser.client` WITHOUT their references, grades each answer
on the client side (as a user's thumbs up/down would) and sends it as feedback; then stops the
server and runs `laser-server ope` on its data directory.

    .venv/bin/python bench/ope_demo.py --out docs/ope/served            # 60 per task, ~15 min
    .venv/bin/python bench/ope_demo.py --per-task 5 --data-dir /tmp/d   # a quick look

Not a timed test: it makes a log, the numbers are the estimators'.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serving import free_port, wait_healthy  # bench/_serving.py

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("arithmetic", "gsm8k", "longqa", "multidoc_qa")


async def _traffic(url: str, per_task: int, concurrency: int, seed: int) -> dict[str, int]:
    from laser.client import AsyncClient
    from laser.server.data import PromptItem
    from laser.server.evaluation.data import build_task
    from laser.server.evaluation.grading import KIND_TASK, grade, item_kind
    from laser.server.runtime import progress

    items = [it for task in TASKS for it in build_task(task, per_task, seed=seed)]
    random.Random(seed).shuffle(items)
    done = {"answered": 0, "feedback": 0, "errors": 0}
    sem = asyncio.Semaphore(concurrency)
    bar = progress(len(items), "requests")

    async def one(client: AsyncClient, item: PromptItem) -> None:
        kind = item_kind(item)
        assert item.reference is not None
        async with sem:
            try:
                r = await client.generate(
                    item.prompt,
                    documents=item.documents or None,
                    task=KIND_TASK[kind],
                    n=4,
                    max_tokens=48,
                )
                done["answered"] += 1
                quality = grade(r.text, item.reference, kind).quality
                await client.feedback(r.id, quality)
                done["feedback"] += 1
            except Exception as exc:  # shown, counted; the run goes on
                done["errors"] += 1
                print(f"request failed: {exc}", file=sys.stderr)
            bar.update(1)

    async with AsyncClient(url, timeout=600, max_retries=3) as client:
        await asyncio.gather(*(one(client, it) for it in items))
    bar.close()
    return done


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--per-task", type=int, default=60)
    p.add_argument("--epsilon", type=float, default=0.2)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seed", type=int, default=1, help="item sample (eval's headline uses 0)")
    p.add_argument("--data-dir", help="default: a fresh temporary folder")
    p.add_argument("--out", help="where `laser-server ope` writes ope.md/json/png")
    args = p.parse_args(argv)
    data = Path(args.data_dir or tempfile.mkdtemp(prefix="laser-ope-"))
    port = free_port()
    env = {**os.environ, "LASER_BANDIT__EPSILON": str(args.epsilon)}
    exe = str(Path(sys.executable).parent / "laser-server")
    cache = ROOT / ".cache" / "models"
    cmd = [exe, "serve", "--data-dir", str(data), "--port", str(port)]
    if cache.is_dir():
        env["LASER_CACHE_DIR"] = str(cache)
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, "the server did not start")
        t = time.monotonic()
        done = asyncio.run(_traffic(url, args.per_task, args.concurrency, args.seed))
        print(f"{done} in {time.monotonic() - t:.0f} s; data in {data}", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    ope = [exe, "ope", "--data-dir", str(data)]
    if args.out:
        ope += ["--out", args.out]
    subprocess.run(ope, check=True)


if __name__ == "__main__":
    main()
