"""Training jobs run by the server: each in its own process (`laser-server train`), so serving
latency is not hurt, recorded in SQLite (`<data_dir>/training/jobs.db`) so they survive a
server restart.

One job runs at a time: a second submission while one runs gets 409 (no hidden queue).
After a restart, a job recorded as running whose process is gone is started again with
`--resume` (it continues from its last checkpoint); if that cannot be done it is marked
`failed` with the reason. Cancelling sends SIGTERM: the job finishes its current step and
stops; its last checkpoint stays usable.

States: running -> succeeded | failed | cancelled (cancelling while it winds down).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from laser.bandit import LinUCB, save_state
from laser.server.data import PromptItem, write_prompts
from laser.server.protocol import TrainingJob
from laser.server.training.config import TrainConfig

log = logging.getLogger("laser.server.training")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    exit_code INTEGER,
    attempts INTEGER NOT NULL,
    error TEXT,
    config TEXT NOT NULL,
    initial_bandit TEXT
);
"""
FINAL = ("succeeded", "failed", "cancelled")


class JobConflictError(RuntimeError):
    """A job is running already (one at a time)."""


class UnknownJobError(KeyError):
    pass


def _alive(pid: int | None, job_id: str) -> bool:
    """Whether `pid` is a live process running this job (not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and job_id in cmdline


class JobManager:
    """Submit, inspect, cancel and recover training jobs.

    >>> # jobs = JobManager(Path("laser-data"), cache_dir=Path("laser-data/cache"))
    >>> # job = jobs.submit(TrainConfig(prompts="p.jsonl"))
    """

    def __init__(self, data_dir: Path, cache_dir: Path) -> None:
        self.root = data_dir / "training"
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache_dir = cache_dir
        # One worker thread does all of a manager's SQLite, file and process work: callers on
        # the event loop go through `call`, so nothing here blocks the loop.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="laser-jobs")
        self.conn = sqlite3.connect(
            self.root / "jobs.db", isolation_level=None, check_same_thread=False
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` (a method of this manager) on its worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(fn, *args, **kwargs))

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    # -- lifecycle --------------------------------------------------------------------------
    def submit(
        self,
        cfg: TrainConfig,
        *,
        items: list[PromptItem] | None = None,
        initial_bandit: LinUCB | None = None,
    ) -> TrainingJob:
        """Start a job now (409-style `JobConflictError` while another runs)."""
        self.refresh()
        running = self.conn.execute(
            "SELECT id FROM jobs WHERE state IN ('running', 'cancelling')"
        ).fetchone()
        if running is not None:
            raise JobConflictError(f"job {running[0]} is running; one job at a time")
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        out = self.job_dir(job_id)
        out.mkdir(parents=True)
        if items is not None:
            write_prompts(out / "prompts.jsonl", items)
            cfg = cfg.model_copy(update={"prompts": str(out / "prompts.jsonl")})
        bandit_path = None
        if initial_bandit is not None:
            bandit_path = str(out / "initial_bandit.npz")
            save_state(bandit_path, initial_bandit)
        cfg = cfg.model_copy(update={"output_dir": str(out / "run")})
        stored = json.dumps(cfg.storable())  # no token value reaches the disk
        (out / "config.json").write_text(json.dumps(cfg.storable(), indent=1), encoding="utf-8")
        now = time.time()
        # Recorded before the process starts: a crash in between is seen at restart.
        self.conn.execute(
            "INSERT INTO jobs (id, created, updated, state, attempts, config, initial_bandit) "
            "VALUES (?, ?, ?, 'running', 0, ?, ?)",
            (job_id, now, now, stored, bandit_path),
        )
        self._start(job_id, resume=False)
        return self.get(job_id)

    def _start(self, job_id: str, resume: bool) -> None:
        out = self.job_dir(job_id)
        row = self.conn.execute(
            "SELECT initial_bandit FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        cmd = [
            sys.executable,
            "-m",
            "laser.server.cli",
            "train",
            "--config",
            str(out / "config.json"),
            "--cache-dir",
            str(self.cache_dir),
            "--no-progress",
            "--job-id",
            job_id,
        ]
        if row and row[0]:
            cmd += ["--initial-bandit", row[0]]
        if resume:
            cmd.append("--resume")
        logf = (out / "train.log").open("ab")
        # Its own session: a Ctrl-C or SIGTERM to the server does not reach the job.
        proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd()
        )
        logf.close()
        self._procs[job_id] = proc
        self.conn.execute(
            "UPDATE jobs SET pid = ?, attempts = attempts + 1, updated = ? WHERE id = ?",
            (proc.pid, time.time(), job_id),
        )
        log.info(
            "training job %s started (pid %d%s)", job_id, proc.pid, ", resume" if resume else ""
        )

    def refresh(self) -> None:
        """Fold exited processes into their jobs' states."""
        for job_id, proc in list(self._procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self._procs[job_id]
            state = self.conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[
                0
            ]
            if code == 0:
                new, error = "succeeded", None
            elif state == "cancelling" or code == 3:
                new, error = "cancelled", None
            else:
                new, error = "failed", self._log_tail(job_id, 5)
            self.conn.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, error = ?, updated = ? WHERE id = ?",
                (new, code, error, time.time(), job_id),
            )

    def recover(self) -> list[str]:
        """At server start: jobs recorded as running are re-attached, resumed or failed."""
        resumed = []
        rows = self.conn.execute(
            "SELECT id, pid, state FROM jobs WHERE state IN ('running', 'cancelling')"
        ).fetchall()
        for job_id, pid, state in rows:
            if _alive(pid, job_id):
                log.info("training job %s still running (pid %d): watching it by pid", job_id, pid)
                continue
            if state == "cancelling":
                self._finish(job_id, "cancelled", None)
                continue
            try:
                self._start(job_id, resume=True)
                resumed.append(job_id)
            except OSError as exc:
                self._finish(job_id, "failed", f"could not resume after restart: {exc}")
        return resumed

    def _finish(self, job_id: str, state: str, error: str | None) -> None:
        self.conn.execute(
            "UPDATE jobs SET state = ?, error = ?, updated = ? WHERE id = ?",
            (state, error, time.time(), job_id),
        )

    def cancel(self, job_id: str) -> TrainingJob:
        job = self.get(job_id)
        if job.state in FINAL:
            return job
        pid = job.pid
        if pid is not None and _alive(pid, job_id):
            os.kill(pid, signal.SIGTERM)
            self.conn.execute(
                "UPDATE jobs SET state = 'cancelling', updated = ? WHERE id = ?",
                (time.time(), job_id),
            )
        else:
            self._finish(job_id, "cancelled", None)
        return self.get(job_id)

    # -- reading ----------------------------------------------------------------------------
    def _log_tail(self, job_id: str, lines: int = 20) -> str:
        path = self.job_dir(job_id) / "train.log"
        if not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 16_384))
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def get(self, job_id: str) -> TrainingJob:
        self.refresh()
        row = self.conn.execute(
            "SELECT id, created, updated, state, pid, exit_code, attempts, error, config "
            "FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise UnknownJobError(job_id)
        orphan = row[3] in ("running", "cancelling") and job_id not in self._procs
        # A job started by an earlier server process is watched by pid.
        if orphan and not _alive(row[4], job_id):
            done = self._status(job_id).get("state") == "succeeded"
            error = None if done else "the job's process ended without finishing"
            self._finish(job_id, "succeeded" if done else "failed", error)
            return self.get(job_id)
        cfg = json.loads(row[8])
        status = self._status(job_id)
        return TrainingJob(
            id=row[0],
            state=row[3],
            created=row[1],
            updated=row[2],
            pid=row[4],
            exit_code=row[5],
            attempts=row[6],
            error=row[7],
            selector=cfg["selector"],
            iteration=status.get("iteration", 0),
            iterations=cfg["iterations"],
            step=status.get("step", 0),
            steps=status.get("steps"),
            last_loss=status.get("last_loss"),
            rm_counts=status.get("rm_counts", {}),
            adapter=self.adapter_path(job_id, must_exist=False),
            log_tail=self._log_tail(job_id),
        )

    def _status(self, job_id: str) -> dict[str, Any]:
        path = self.job_dir(job_id) / "run" / "status.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return data
        except (OSError, ValueError):
            return {}

    def list(self) -> list[TrainingJob]:
        ids = [r[0] for r in self.conn.execute("SELECT id FROM jobs ORDER BY created DESC")]
        return [self.get(i) for i in ids]

    def adapter_path(self, job_id: str, must_exist: bool = True) -> str | None:
        """The adapter of the job's latest checkpoint. `UnknownJobError` unless `job_id` names
        a job of this manager: an id is never used as a path before it is looked up."""
        from laser.server.training.checkpoint import latest_checkpoint

        if self.conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
            raise UnknownJobError(job_id)

        ckpt = latest_checkpoint(self.job_dir(job_id) / "run" / "checkpoints")
        if ckpt is None:
            if must_exist:
                raise FileNotFoundError(f"job {job_id} has no checkpoint yet")
            return None
        return str(ckpt / "adapter")

    def close(self) -> None:
        self._pool.submit(self.conn.close).result()
        self._pool.shutdown(wait=True)
