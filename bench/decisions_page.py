"""How fast `/admin/decisions` answers on a large log: 100,000 decisions (a fifth with
feedback) written to a SQLite file, then `laser-server serve` on it and real HTTP requests
over 127.0.0.1: the first page, a page deep in the log (by cursor), a page filtered by RM and
one filtered by feedback, and one decision whole.

    .venv/bin/python bench/decisions_page.py                 # -> bench/decisions_page.json

Median and p90 of 50 requests each (the machine is noisy: medians, not single runs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _serving import free_port, wait_healthy  # bench/_serving.py

from laser.server.observe import Observed
from laser.server.store.base import Decision
from laser.server.store.sqlite import Store

ROOT = Path(__file__).resolve().parents[1]
KEY = "decisions-page-bench-key-0123456789"
RMS = ["arith", "grounding", "judge", "loglik", "agreement", "relevance"]


def fill(db: Path, count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    store = Store(db)
    ids = []
    t0 = time.time() - count
    try:
        for start in range(0, count, 1000):
            batch = []
            for i in range(start, min(count, start + 1000)):
                arm = rng.choice(RMS)
                scores = {r: [rng.random() for _ in range(8)] for r in RMS[:4]}
                d = Decision(
                    id=f"bench-{i}",
                    created=t0 + i,
                    prompt=f"What is {i % 97} + {i % 13}? Answer with a number.",
                    task="math",
                    has_document=False,
                    arm=arm,
                    propensity=0.5,
                    selection="bandit",
                    context=np.ones(7),
                    scores=scores.get(arm, [rng.random() for _ in range(8)]),
                    chosen=rng.randrange(8),
                    model="SmolLM2-135M-Instruct",
                    drawn_arm=arm,
                    probabilities={r: 1 / len(RMS) for r in RMS},
                    observed=Observed([], [], scores),
                    candidates=[f"candidate {j} of {i}" for j in range(8)],
                )
                batch.append(d)
                ids.append(d.id)
            assert all(x is None for x in store.run_sync(store._insert_decisions, batch))
        with_feedback = ids[::5]
        store.run_sync(
            lambda: store.conn.executemany(
                "INSERT INTO feedback (decision_id, reward, created) VALUES (?,?,?)",
                [(i, 1.0, time.time()) for i in with_feedback],
            )
        )
    finally:
        store.close()
    return ids


def timed(client: httpx.Client, path: str, params: dict[str, str], runs: int) -> dict[str, float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        r = client.get(path, params=params)
        out.append(1000 * (time.perf_counter() - t))
        assert r.status_code == 200, r.text
    out.sort()
    return {"median_ms": round(statistics.median(out), 2), "p90_ms": round(out[int(0.9 * runs)], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "bench" / "decisions_page.json"))
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="laser-decisions-"))
    t = time.perf_counter()
    ids = fill(data / "laser.db", args.decisions)
    fill_s = time.perf_counter() - t
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LASER_API_KEY": KEY, "LASER_DATA_DIR": str(data), "LASER_PORT": str(port)}
    if (ROOT / ".cache" / "models").is_dir():
        env["LASER_CACHE_DIR"] = str(ROOT / ".cache" / "models")
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "laser-server"), "serve"], env=env, stdout=log, stderr=log
    )
    try:
        wait_healthy(url, proc, "the server did not start")
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            deep = ids[len(ids) // 10]
            cursor = c.get(f"/admin/decisions/{deep}").json()
            before = f"{cursor['created']!r}:{deep}"
            page = "/admin/decisions"
            results = {
                "first page (50)": timed(c, page, {}, args.runs),
                "deep page (90% down, by cursor)": timed(
                    c, "/admin/decisions", {"before": before}, args.runs
                ),
                "filtered by RM": timed(
                    c, "/admin/decisions", {"reward_model": "judge"}, args.runs
                ),
                "filtered by feedback": timed(
                    c, "/admin/decisions", {"feedback": "yes"}, args.runs
                ),
                "one decision whole": timed(c, f"/admin/decisions/{ids[-1]}", {}, args.runs),
            }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        shutil.rmtree(data, ignore_errors=True)
    report = {
        "command": "python bench/decisions_page.py",
        "decisions": args.decisions,
        "with_feedback": len(ids[::5]),
        "fill_seconds": round(fill_s, 1),
        "runs": args.runs,
        "results": results,
        "machine": f"{os.cpu_count()} CPUs",
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for name, r in results.items():
        print(f"{name:<34} median {r['median_ms']:7.2f} ms   p90 {r['p90_ms']:7.2f} ms")


if __name__ == "__main__":
    main()
