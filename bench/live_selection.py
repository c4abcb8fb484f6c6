"""Live selection: what one served deployment learns, end to end.

    .venv/bin/python bench/live_selection.py            # 120 items -> bench/live_selection.json
    .venv/bin/python bench/live_selection.py --priors priors.json --out /tmp/live.json

Starts `laser-server serve` on the embedded default (every built-in RM, `judge` included) with
a fresh data folder, then sends items of the second generator family (word problems,
one-document code QA, two-document bridge QA; `laser.server.evaluation.family_b`) in one
seeded order through `laser.client`, each with its `task` hint, grades every answer on the
client side (accuracy; token F1 for QA, as the evaluation grades) and posts the grade as
feedback. It reports, per kind of query, accuracy in the first and second half, which RM
answered and how the decisions were made (`bandit`, `abstain`, ...) over the last third, and
the RMs' update counts (side observations included). The server's SQLite log is read back
at the end: every feedback acknowledged must be there.

Not a timed test: the accuracies depend on the sampled candidates; one ordering is one
deployment (the evaluation reports the spread over 20).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from _serving import free_port, wait_healthy  # bench/_serving.py

from laser.client import Client
from laser.server.evaluation.data import build_task
from laser.server.evaluation.grading import grade, item_kind

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("word_math", "code_qa", "bridge_qa")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=40, help="items per kind (default 40)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1, help="items and their order")
    ap.add_argument("--priors", help="a priors file for the server (`laser-server priors`)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "live_selection.json"))
    args = ap.parse_args(argv)

    items = [
        (task, it)
        for k, task in enumerate(TASKS)
        for it in build_task(task, args.items, seed=args.seed * 100 + k)
    ]
    random.Random(args.seed).shuffle(items)
    data = Path(tempfile.mkdtemp(prefix="laser-live-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LASER_DATA_DIR": str(data), "LASER_PORT": str(port)}
    if (ROOT / ".cache" / "models").is_dir():  # the converted model the tests keep
        env["LASER_CACHE_DIR"] = str(ROOT / ".cache" / "models")
    if args.priors:
        env["LASER_BANDIT__PRIORS"] = str(Path(args.priors).resolve())
    log = data / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "laser-server"), "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(url, proc, f"the server did not start; see {log}")
        rows = _run(url, items, args)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    report = _report(rows, data / "laser.db", args)
    shutil.rmtree(data, ignore_errors=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for kind, r in report["per_kind"].items():
        print(
            f"{kind:<10} first half {100 * r['first_half']:5.1f}  second half "
            f"{100 * r['second_half']:5.1f}  last third by RM {r['last_third_rms']}"
        )
    print(f"selections {report['selection']}; updates {report['updates']}; -> {args.out}")


def _run(url: str, items: list[tuple[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with Client(url, timeout=600) as client:
        for step, (task, it) in enumerate(items):
            t = time.perf_counter()
            res = client.generate(
                it.prompt,
                documents=it.documents or None,
                task=it.task,
                n=args.n,
                max_tokens=args.max_tokens,
                temperature=0.8,
            )
            quality = grade(res.text, it.reference, item_kind(it)).quality
            fb = client.feedback(res.id, quality)
            rows.append(
                {
                    "step": step,
                    "task": task,
                    "id": res.id,
                    "rm": res.reward_model,
                    "selection": res.selection,
                    "quality": quality,
                    "acknowledged": fb.seq,
                    "seconds": round(time.perf_counter() - t, 2),
                }
            )
            print(f"{step + 1}/{len(items)} {task} {res.reward_model} {quality:.2f}", flush=True)
        rows[-1]["updates"] = {n: a["updates"] for n, a in client.reward_models().items()}
    return rows


def _report(rows: list[dict[str, Any]], db: Path, args: argparse.Namespace) -> dict[str, Any]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        stored = dict(con.execute("SELECT decision_id, reward FROM feedback").fetchall())
    lost = [r["id"] for r in rows if stored.get(r["id"]) != r["quality"]]
    per_kind: dict[str, Any] = {}
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    for task, rs in by_task.items():
        half, third = len(rs) // 2, len(rs) - len(rs) // 3
        per_kind[task] = {
            "items": len(rs),
            "first_half": round(sum(r["quality"] for r in rs[:half]) / max(1, half), 4),
            "second_half": round(sum(r["quality"] for r in rs[half:]) / max(1, len(rs) - half), 4),
            "last_third_rms": dict(Counter(r["rm"] for r in rs[third:])),
        }
    return {
        "command": "python bench/live_selection.py " + " ".join(sys.argv[1:]),
        "items": len(rows),
        "n": args.n,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "priors": args.priors,
        "per_kind": per_kind,
        "selection": dict(Counter(r["selection"] for r in rows)),
        "updates": rows[-1].get("updates", {}) if rows else {},
        "feedback_lost": lost,
        "machine": f"{os.cpu_count()} CPUs",
        "rows": rows,
    }


if __name__ == "__main__":
    main()
