"""Soak test: one `laser-server serve` on the embedded default under steady mixed traffic for
a while, watched for errors, latency drift, memory growth and lost feedback.

    .venv/bin/python bench/soak.py                          # 30 minutes -> bench/soak.json
    .venv/bin/python bench/soak.py --minutes 1 --out /tmp/soak.json --max-rss-growth 25

A few client workers (bounded concurrency) loop until the deadline over `/generate`
(arithmetic with a `task` hint; short made-up documents with a question about them) and
OpenAI chat completions through the `openai` SDK (streamed by default, sometimes not), and
send feedback on every other answer. An admin task disables and re-enables one reward model
every few minutes, and `/health` is polled every second. The server runs with an API key
and modest limits (small n and max_tokens, a short admission queue) so a 2-core machine can
keep up; 429 and 503 are the server shedding load, counted apart from real errors.

At the end the server is stopped with SIGTERM and its SQLite log is opened read-only: every
feedback that was acknowledged (200) must have its row, and every answer its decision.

One script on purpose (a bench anyone can copy and run): traffic, memory sampling, the log
check and the report read top to bottom, hence its length.

Exits non-zero on an unexpected error (anything but 429/503), a missing row, an unclean
stop, or server memory growing past `--max-rss-growth` percent between the end of warm-up
and the end. Not a timed test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _serving import free_port, wait_healthy  # bench/_serving.py

ROOT = Path(__file__).resolve().parents[1]
OVERLOAD = frozenset({429, 503})  # the server shedding load: expected, counted apart
# What the workers send, in turn; worker w starts at place w, so the first round already
# covers plain generation, generation with a document and a streamed chat.
SCHEDULE = ("generate", "generate_doc", "chat_stream", "generate", "generate_doc", "chat")
GENERATION = ("generate", "generate_doc", "chat_stream", "chat")
KINDS = (*GENERATION, "feedback", "admin", "health")

# Short made-up documents, each with questions and the word a right answer contains.
DOCUMENTS = (
    (
        "The village of Brell lies where the river Oska meets the sea. Its only bakery is run "
        "by Tamsin Vey, who opens at six every morning. The lighthouse was painted green in "
        "1931 and has stayed green since.",
        (("Who runs the bakery in Brell?", "tamsin"), ("What colour is the lighthouse?", "green")),
    ),
    (
        "Quillon is a card game played with forty cards. Each player starts with seven cards, "
        "and the first to collect three crowns wins. A round ends when the deck is empty.",
        (("How many cards does each player start with?", "seven"), ("What wins Quillon?", "crown")),
    ),
    (
        "The research ship Marrow carries a crew of twelve. Its captain, Odile Fenn, keeps bees "
        "on the upper deck, and the ship's cat is called Pepper.",
        (("What is the ship's cat called?", "pepper"), ("Who is the captain?", "odile")),
    ),
    (
        "Harlow Station sells tea for two coins and soup for five. The station closes at "
        "midnight, except on Fridays, when the last train leaves at one.",
        (("How much does soup cost?", "five"), ("When does the last Friday train leave?", "one")),
    ),
)
CHAT_TOPICS = ("tidy desks", "morning walks", "reading", "tea", "sleep", "learning a language")


# -- recording --------------------------------------------------------------------------------
@dataclass
class Recorder:
    """Every outcome with its time since the traffic started."""

    t0: float
    ok: list[tuple[float, str, float]] = field(default_factory=list)  # (t, kind, latency ms)
    errors: list[tuple[float, str, str, bool]] = field(
        default_factory=list
    )  # (t, kind, key, overload)
    samples: dict[str, str] = field(default_factory=dict)  # error key -> first message
    acked_feedback: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # decision ids of answers
    chat_candidates: Counter[int] = field(default_factory=Counter)  # len(laser.scores)
    chat_without_laser: int = 0
    health_degraded: int = 0
    admin_changes: list[dict[str, Any]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def timed(self, kind: str, call: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """(result, True) of `call()`, its latency recorded under `kind`; (None, overload)
        when it failed, the error recorded."""
        start = time.monotonic()
        try:
            result = await call()
        except Exception as exc:  # counted and shown in the report; the soak goes on
            key, overload = _error_key(exc)
            self.errors.append((start - self.t0, kind, key, overload))
            self.samples.setdefault(f"{kind} {key}", str(exc)[:300])
            return None, overload
        self.ok.append((start - self.t0, kind, (time.monotonic() - start) * 1000))
        return result, True


def _error_key(exc: Exception) -> tuple[str, bool]:
    """`"<status> <code>"` for an HTTP error answer (laser.client's and openai's errors both
    carry the server's `{"error": {..., "code"}}`), else the exception's name; and whether it
    is the server shedding load."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return f"{status} {getattr(exc, 'code', None)}", status in OVERLOAD
    return type(exc).__name__, False


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
        "max_ms": round(float(a.max()), 1),
    }


# -- the server's footprint -------------------------------------------------------------------
def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _memory(pid: int) -> dict[str, float]:
    """The server process's RSS, and with its child processes (vLLM's engine core may run
    in one), in MiB."""
    server = _rss_mib(pid)
    tree = server + sum(_rss_mib(c) for c in _descendants(pid))
    return {"server_mib": round(server, 1), "tree_mib": round(tree, 1)}


def _db_bytes(data: Path) -> dict[str, int]:
    sizes = {}
    for name in ("laser.db", "laser.db-wal"):
        p = data / name
        sizes[name] = p.stat().st_size if p.exists() else 0
    return sizes


# -- traffic ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    url: str
    key: str
    model: str
    seconds: float
    window_s: float
    admin_every_s: float
    admin_rm: str
    workers: int
    seed: int


async def _worker(
    w: int, plan: Plan, rec: Recorder, deadline: float, requests: int | None = None
) -> None:
    """Generation and chat requests in `SCHEDULE` order until `deadline` (or `requests` of
    them), feedback on every other answer."""
    from openai import AsyncOpenAI

    from laser.client import AsyncClient

    rng = random.Random(plan.seed * 1000 + w)
    # max_retries=0: every 429/503 is seen and counted; the worker then waits Retry-After.
    laser = AsyncClient(plan.url, api_key=plan.key, timeout=120, max_retries=0)
    oa = AsyncOpenAI(base_url=plan.url + "/v1", api_key=plan.key, timeout=120, max_retries=0)
    answers = 0
    try:
        for i in range(requests or 10**9):
            if time.monotonic() >= deadline:
                break
            kind = SCHEDULE[(w + i) % len(SCHEDULE)]
            if kind == "generate":
                a, b = rng.randint(2, 99), rng.randint(2, 99)
                op, value = rng.choice((("+", a + b), ("-", a - b), ("*", a * b)))
                prompt = f"What is {a} {op} {b}? Answer with the number."
                task = rng.choice(("arithmetic", "math"))
                call = _generate(laser, prompt, None, task, rng.choice((2, 3)), str(value))
            elif kind == "generate_doc":
                doc, questions = rng.choice(DOCUMENTS)
                question, word = rng.choice(questions)
                call = _generate(laser, question, doc, "qa", rng.choice((2, 3)), word)
            else:
                call = _chat(oa, plan.model, rng, rec, stream=kind == "chat_stream")
            result, ok = await rec.timed(kind, call)
            if result is None:
                if ok:  # overloaded: back off as the server asked
                    await asyncio.sleep(1.0)
                continue
            decision_id, reward = result
            rec.answered.append(decision_id)
            answers += 1
            if answers % 2 == 1 and decision_id:  # feedback on every other answer
                fb, _ = await rec.timed("feedback", _feedback(laser, decision_id, reward))
                if fb is not None:
                    rec.acked_feedback.append(decision_id)
    finally:
        await laser.aclose()
        await oa.close()


def _generate(
    laser: Any, prompt: str, document: str | None, task: str, n: int, expect: str
) -> Callable[[], Awaitable[tuple[str, float]]]:
    async def call() -> tuple[str, float]:
        r = await laser.generate(prompt, document=document, task=task, n=n)
        return r.id, 1.0 if expect in r.text.lower() else 0.0

    return call


def _chat(
    oa: Any, model: str, rng: random.Random, rec: Recorder, stream: bool
) -> Callable[[], Awaitable[tuple[str, float]]]:
    """A chat completion with the SDK's defaults (no best_of, no max_tokens: the server's
    defaults apply); the decision id and a made-up grade."""
    if rng.random() < 0.5:
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        content, expect = f"What is {a} + {b}?", str(a + b)
    else:
        content, expect = f"Give me one short tip about {rng.choice(CHAT_TOPICS)}.", ""

    async def call() -> tuple[str, float]:
        messages = [{"role": "user", "content": content}]
        laser: dict[str, Any] | None = None
        decision_id, text = "", ""
        if stream:
            chunks = await oa.chat.completions.create(model=model, messages=messages, stream=True)
            async for chunk in chunks:
                decision_id = chunk.id
                text += "".join(c.delta.content or "" for c in chunk.choices)
                laser = (chunk.model_extra or {}).get("laser") or laser
        else:
            r = await oa.chat.completions.create(model=model, messages=messages)
            decision_id, text = r.id, r.choices[0].message.content or ""
            laser = (r.model_extra or {}).get("laser")
        if laser is None:
            rec.chat_without_laser += 1
        else:
            rec.chat_candidates[len(laser["scores"])] += 1
            decision_id = laser["id"]
        grade = (1.0 if expect in text else 0.0) if expect else rng.choice((0.0, 0.5, 1.0))
        return decision_id, grade

    return call


def _feedback(laser: Any, decision_id: str, reward: float) -> Callable[[], Awaitable[Any]]:
    return lambda: laser.feedback(decision_id, reward)


async def _admin(plan: Plan, rec: Recorder, deadline: float) -> None:
    """Disable, then re-enable, `plan.admin_rm`, one change every `admin_every_s`."""
    from laser.client import AsyncClient

    async with AsyncClient(plan.url, api_key=plan.key, timeout=60, max_retries=0) as laser:
        k = 1
        while True:
            due = rec.t0 + k * plan.admin_every_s
            if due >= deadline:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            action = "disable" if k % 2 else "enable"
            change = laser.disable_reward_model if k % 2 else laser.enable_reward_model
            r, _ = await rec.timed("admin", functools.partial(change, plan.admin_rm))
            rec.admin_changes.append(
                {"t_s": round(rec.now(), 1), "action": action, "ok": r is not None}
            )
            k += 1


async def _health(plan: Plan, rec: Recorder, deadline: float) -> None:
    """GET /health once a second, without the key (as a load balancer would)."""
    async with httpx.AsyncClient(timeout=30) as client:

        async def poll() -> None:
            r = await client.get(plan.url + "/health")
            if r.status_code != 200:
                raise RuntimeError(f"/health answered {r.status_code}: {r.text[:200]}")
            if r.json().get("status") != "ok":
                rec.health_degraded += 1

        while time.monotonic() < deadline:
            start = time.monotonic()
            await rec.timed("health", poll)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - start)))


async def _monitor(
    plan: Plan, rec: Recorder, pid: int, data: Path, deadline: float, samples: list[dict[str, Any]]
) -> None:
    """At the end of every window: the server's memory and log size, and a progress line."""
    k = 1
    while True:
        due = min(rec.t0 + k * plan.window_s, deadline)
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        t1 = rec.now()
        t0 = (k - 1) * plan.window_s
        sample = {"t_s": round(t1, 1), **_memory(pid), **_db_bytes(data)}
        samples.append(sample)
        served = Counter(kind for t, kind, _ in rec.ok if t0 <= t < t1)
        gen = [ms for t, kind, ms in rec.ok if t0 <= t < t1 and kind in GENERATION]
        errors = [e for e in rec.errors if t0 <= e[0] < t1]
        st = _stats(gen)
        db_mib = (sample["laser.db"] + sample["laser.db-wal"]) / 2**20
        print(
            f"[{t1:6.0f}/{plan.seconds:.0f} s] "
            + " ".join(f"{kind} {served[kind]}" for kind in KINDS)
            + f" | errors {sum(not e[3] for e in errors)} overload {sum(e[3] for e in errors)}"
            + f" | p50 {st.get('p50_ms', 0):.0f} p99 {st.get('p99_ms', 0):.0f} ms"
            + f" | RSS {sample['server_mib']:.0f} MiB | db {db_mib:.1f} MiB",
            file=sys.stderr,
            flush=True,
        )
        if due >= deadline:
            return
        k += 1


async def _warm_up(plan: Plan) -> tuple[list[str], Recorder]:
    """Before the start-of-run memory is read: one request forced to each reward model (each
    loads what it loads lazily), then one concurrent round of the real traffic (every kind,
    at the run's concurrency, so the server has seen its batch shapes and threads)."""
    from laser.client import AsyncClient

    async with AsyncClient(plan.url, api_key=plan.key, timeout=300) as laser:
        rms = list(await laser.reward_models())
        for rm in rms:
            await laser.generate("What is 2 + 3?", reward_model=rm, n=2)
    rec = Recorder(t0=time.monotonic())
    deadline = rec.t0 + 600
    per_worker = max(4, -(-len(SCHEDULE) // plan.workers))  # the round covers every kind
    await asyncio.gather(
        *(_worker(w, plan, rec, deadline, per_worker) for w in range(plan.workers))
    )
    return rms, rec


async def _traffic(plan: Plan, pid: int, data: Path) -> tuple[Recorder, list[dict[str, Any]]]:
    rec = Recorder(t0=time.monotonic())
    deadline = rec.t0 + plan.seconds
    samples: list[dict[str, Any]] = []
    await asyncio.gather(
        *(_worker(w, plan, rec, deadline) for w in range(plan.workers)),
        _admin(plan, rec, deadline),
        _health(plan, rec, deadline),
        _monitor(plan, rec, pid, data, deadline, samples),
    )
    return rec, samples


# -- after the run ----------------------------------------------------------------------------
def _check_log(db: Path, acked: list[str], answered: list[str]) -> dict[str, Any]:
    """Which acknowledged feedback and which answered decisions are missing from the log."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        feedback = {r[0] for r in con.execute("SELECT decision_id FROM feedback")}
        decisions = {r[0] for r in con.execute("SELECT id FROM decisions")}
    missing_fb = sorted(set(acked) - feedback)
    missing_dec = sorted(set(answered) - decisions)
    return {
        "feedback": {
            "acknowledged": len(acked),
            "rows": len(feedback),
            "missing": len(missing_fb),
            "missing_ids": missing_fb[:20],
        },
        "decisions": {
            "answered": len(answered),
            "rows": len(decisions),
            "missing": len(missing_dec),
            "missing_ids": missing_dec[:20],
        },
    }


def _windows(rec: Recorder, plan: Plan, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for k, sample in enumerate(samples):
        t0, t1 = k * plan.window_s, sample["t_s"]
        by_kind: dict[str, list[float]] = defaultdict(list)
        for t, kind, ms in rec.ok:
            if t0 <= t < t1 or (k == len(samples) - 1 and t >= t0):  # late finishers: last
                by_kind[kind].append(ms)
        errors = [e for e in rec.errors if t0 <= e[0] < t1]
        out.append(
            {
                "t0_s": round(t0, 1),
                "t1_s": t1,
                "latency_ms": {kind: _stats(by_kind[kind]) for kind in KINDS if by_kind[kind]},
                "unexpected_errors": sum(not e[3] for e in errors),
                "overload": sum(e[3] for e in errors),
                **{k2: v for k2, v in sample.items() if k2 != "t_s"},
            }
        )
    return out


def _report(
    rec: Recorder,
    plan: Plan,
    start_mem: dict[str, float],
    end_mem: dict[str, float],
    samples: list[dict[str, Any]],
    db_end: dict[str, int],
    log: dict[str, Any],
) -> dict[str, Any]:
    served = Counter(kind for _, kind, _ in rec.ok)
    unexpected: dict[str, Counter[str]] = defaultdict(Counter)
    overload: dict[str, Counter[str]] = defaultdict(Counter)
    for _, kind, key, shed in rec.errors:
        (overload if shed else unexpected)[kind][key] += 1

    def growth(since: dict[str, Any]) -> dict[str, float | None]:
        return {
            k: round(100 * (end_mem[k] - since[k]) / since[k], 2) if since[k] else None
            for k in start_mem
        }

    first = {k: samples[0][k] for k in start_mem} if samples else start_mem
    by_kind: dict[str, list[float]] = defaultdict(list)
    for _, kind, ms in rec.ok:
        by_kind[kind].append(ms)
    return {
        "served": {kind: served[kind] for kind in KINDS},
        "errors": {
            "unexpected": {k: dict(v) for k, v in unexpected.items()},
            "unexpected_total": sum(sum(v.values()) for v in unexpected.values()),
            "overload": {k: dict(v) for k, v in overload.items()},
            "overload_total": sum(sum(v.values()) for v in overload.values()),
            "samples": rec.samples,
        },
        "latency_ms": {kind: _stats(by_kind[kind]) for kind in KINDS},
        "windows": _windows(rec, plan, samples),
        "health": {**_stats(by_kind["health"]), "degraded": rec.health_degraded},
        "rss_mib": {
            "start": start_mem,
            "end": end_mem,
            "growth_pct": growth(start_mem),
            # Growth after the first window: what a leak shows, without any settling-in.
            "first_window_end": first,
            "growth_after_first_window_pct": growth(first),
        },
        "db_bytes_end": db_end,
        "chat_candidates": {str(k): v for k, v in sorted(rec.chat_candidates.items())},
        "chat_without_laser": rec.chat_without_laser,
        "admin_changes": rec.admin_changes,
        **log,
    }


def _print(out: dict[str, Any]) -> None:
    served, errors, lat = out["served"], out["errors"], out["latency_ms"]
    rss = out["rss_mib"]
    print(f"soak: {out['seconds']:.0f} s, {out['workers']} workers, {out['machine']}")
    print("served: " + ", ".join(f"{k} {v}" for k, v in served.items()))
    print(
        f"errors: {errors['unexpected_total']} unexpected {errors['unexpected'] or ''}; "
        f"{errors['overload_total']} overload (429/503) {errors['overload'] or ''}"
    )
    for kind in (*GENERATION, "feedback"):
        s = lat[kind]
        if s["n"]:
            print(f"  {kind:13s} p50 {s['p50_ms']:7.0f} ms  p99 {s['p99_ms']:7.0f} ms  n {s['n']}")
    print("per window (all generation kinds): p50 / p99 ms")
    for w in out["windows"]:
        gen = [w["latency_ms"].get(k, {}) for k in GENERATION]
        gen = [g for g in gen if g.get("n")]
        p50 = max((g["p50_ms"] for g in gen), default=0)
        p99 = max((g["p99_ms"] for g in gen), default=0)
        print(
            f"  {w['t0_s']:6.0f}-{w['t1_s']:<6.0f} s  worst-kind p50 {p50:6.0f}  p99 {p99:6.0f}  "
            f"RSS {w['server_mib']:.0f} MiB  errors {w['unexpected_errors']}"
        )
    h = out["health"]
    if h["n"]:
        print(
            f"/health: {h['n']} polls, p50 {h['p50_ms']:.1f} p99 {h['p99_ms']:.1f} "
            f"max {h['max_ms']:.1f} ms, {h['degraded']} degraded"
        )
    print(
        f"RSS server {rss['start']['server_mib']:.0f} -> {rss['end']['server_mib']:.0f} MiB "
        f"({rss['growth_pct']['server_mib']:+.1f}%), with children "
        f"{rss['start']['tree_mib']:.0f} -> {rss['end']['tree_mib']:.0f} MiB "
        f"({rss['growth_pct']['tree_mib']:+.1f}%)"
    )
    db = out["db_bytes_end"]
    print(f"SQLite: {db['laser.db'] / 2**20:.2f} MiB + WAL {db['laser.db-wal'] / 2**20:.2f} MiB")
    print(f"chat replies by candidates scored: {out['chat_candidates']}")
    fb, dec = out["feedback"], out["decisions"]
    print(
        f"log after SIGTERM (exit {out['server_exit_code']}): feedback {fb['acknowledged']} "
        f"acknowledged, {fb['missing']} missing; decisions {dec['answered']} answered, "
        f"{dec['missing']} missing"
    )
    print("FAILED: " + "; ".join(out["failures"]) if out["failures"] else "OK")


# -- main -------------------------------------------------------------------------------------
def _config(path: Path, data: Path, cache: Path, port: int) -> Path:
    """Modest limits a 2-core CPU box can serve: small n and max_tokens, 2 requests worked on
    at once and a short queue (more is refused with 429, a long wait ends in 503)."""
    path.write_text(
        f'host = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\ncache_dir = "{cache}"\n'
        "n_default = 3\nn_max = 4\nmax_tokens_default = 24\nmax_tokens_limit = 64\n"
        "max_concurrent = 2\nmax_queue = 8\nqueue_timeout_s = 60\n"
        "[engine]\nmax_model_len = 1024\n"
    )
    return path


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM (the server drains and exits 0); SIGKILL to its process group after 120 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        return -9


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="traffic duration")
    p.add_argument("--out", default=str(ROOT / "bench" / "soak.json"), help="JSON figures")
    p.add_argument("--workers", type=int, default=3, help="concurrent client workers")
    p.add_argument(
        "--window-s", type=float, help="latency/memory window (default: the duration / 6)"
    )
    p.add_argument(
        "--admin-every-s",
        type=float,
        help="seconds between RM disable/enable changes (default: min(180, duration / 4))",
    )
    p.add_argument("--admin-rm", default="relevance", help="the RM the admin task toggles")
    p.add_argument(
        "--max-rss-growth", type=float, default=10.0, help="allowed server RSS growth, percent"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=str(ROOT / ".cache" / "models"), help="model cache")
    p.add_argument("--keep", action="store_true", help="keep the data dir and server log")
    return p.parse_args(argv)


def _start_server(config: Path, key: str, log_path: Path) -> subprocess.Popen[bytes]:
    """`laser-server serve` with the soak's config and key, its log to `log_path`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LASER_API_KEY": key}
    exe = str(Path(sys.executable).parent / "laser-server")
    return subprocess.Popen(
        [exe, "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
        env=env,
        start_new_session=True,  # its process group: a last-resort SIGKILL reaches the engine
    )


def _verdict(out: dict[str, Any], warm: Recorder, max_rss_growth: float) -> list[str]:
    """What makes the run fail: unexpected errors, lost rows, an unclean stop, memory."""
    failures = []
    if out["errors"]["unexpected_total"]:
        failures.append(f"{out['errors']['unexpected_total']} unexpected errors")
    if any(not shed for *_, shed in warm.errors):
        failures.append(f"unexpected errors in the warm-up: {out['warm_up']['errors']}")
    if out["feedback"]["missing"]:  # from _check_log, merged into the report
        failures.append(f"{out['feedback']['missing']} acknowledged feedback missing")
    if out["decisions"]["missing"]:
        failures.append(f"{out['decisions']['missing']} answered decisions missing")
    if out["server_exit_code"] != 0:
        failures.append(f"server exited {out['server_exit_code']} on SIGTERM")
    growth = out["rss_mib"]["growth_pct"]["server_mib"]
    if growth is None or growth > max_rss_growth:
        failures.append(f"server RSS grew {growth}% (> {max_rss_growth}%)")
    return failures


def main(argv: list[str] | None = None) -> None:
    """Start the server, warm it up, run the traffic, stop it, check the log, report."""
    args = _parse_args(argv)
    seconds = args.minutes * 60
    root = Path(tempfile.mkdtemp(prefix="laser-soak-"))
    data, log_path = root / "data", root / "server.log"
    port, key = free_port(), secrets.token_urlsafe(24)
    config = _config(root / "soak.toml", data, Path(args.cache_dir), port)
    url = f"http://127.0.0.1:{port}"
    print(f"starting laser-server on {url} (data and log in {root}) ...", file=sys.stderr)
    proc = _start_server(config, key, log_path)
    failures: list[str] = []
    exit_code: int | None = None
    try:
        wait_healthy(url, proc, f"the server did not start; see {log_path}")
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        plan = Plan(
            url=url,
            key=key,
            model=model,
            seconds=seconds,
            window_s=args.window_s or seconds / 6,
            admin_every_s=args.admin_every_s or min(180.0, seconds / 4),
            admin_rm=args.admin_rm,
            workers=args.workers,
            seed=args.seed,
        )
        t = time.monotonic()
        rms, warm = asyncio.run(_warm_up(plan))
        print(f"warm-up {time.monotonic() - t:.0f} s", file=sys.stderr)
        start_mem = _memory(proc.pid)
        rec, samples = asyncio.run(_traffic(plan, proc.pid, data))
        end_mem, db_end = _memory(proc.pid), _db_bytes(data)
        exit_code = _stop(proc)
        # The warm-up's answers and feedback were acknowledged too: they must be there as well.
        log = _check_log(
            data / "laser.db",
            warm.acked_feedback + rec.acked_feedback,
            warm.answered + rec.answered,
        )
        out = {
            "command": "python bench/soak.py " + " ".join(argv or sys.argv[1:]),
            "machine": f"{os.cpu_count()} CPUs",
            "seconds": seconds,
            "window_s": plan.window_s,
            "admin_every_s": plan.admin_every_s,
            "workers": plan.workers,
            "server_settings": config.read_text(),
            "reward_models": rms,
            **_report(rec, plan, start_mem, end_mem, samples, db_end, log),
            "server_exit_code": exit_code,
            "db_bytes_after_stop": _db_bytes(data),
            "warm_up": {
                "served": dict(Counter(kind for _, kind, _ in warm.ok)),
                "errors": [f"{kind} {key}" for _, kind, key, _ in warm.errors],
            },
        }
        failures = out["failures"] = _verdict(out, warm, args.max_rss_growth)
        _print(out)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"figures in {args.out}", file=sys.stderr)
    finally:
        if proc.poll() is None:
            _stop(proc)
        if args.keep or failures or exit_code is None:
            print(f"server log and data kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
