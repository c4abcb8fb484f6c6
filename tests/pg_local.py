"""A private PostgreSQL server on 127.0.0.1 for tests, benchmarks and trying replicas on one
machine: `initdb` into a folder of ours, `postgres` on a free port, stopped at the end. Uses
the server binaries of Debian's `postgresql` package (`apt-get install postgresql`; the test
set-up installs it when missing). PostgreSQL refuses to run as root, so under root it runs as
the `postgres` user the package creates.

    with LocalPostgres(Path("/tmp/pg")) as pg:
        url = pg.create_database("laser")     # postgresql://postgres@127.0.0.1:<port>/laser
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_binary(name: str) -> Path:
    """`name` (initdb, postgres, pg_ctl) from PATH or the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if versions:
        return versions[-1]
    raise PostgresUnavailableError(
        f"no PostgreSQL `{name}` found: install Debian's postgresql package "
        "(apt-get install -y postgresql)"
    )


def private_root() -> Path:
    """A new folder for a server's data, which the `postgres` user can reach when we run as
    root: directly under /tmp (TMPDIR may sit inside a folder only root can enter)."""
    import tempfile

    base = "/tmp" if Path("/tmp").is_dir() else None
    return Path(tempfile.mkdtemp(prefix="laser-pg-", dir=base))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    def __init__(self, root: Path, port: int | None = None) -> None:
        """`root`: a folder of its own (under root, one the `postgres` user can reach, as
        `private_root()` makes)."""
        self.root = root
        self.data = root / "data"
        self.port = port or _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:  # postgres will not run as root
            self._as = ["runuser", "-u", "postgres", "--"]
        self.proc: subprocess.Popen[bytes] | None = None

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self._as, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr.decode(errors='replace')[-1500:]}")

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            initdb = str(find_binary("initdb"))
            self._run(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        log = (self.root / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [
                *self._as,
                str(find_binary("postgres")),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait()

    def _wait(self, timeout_s: float = 60) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        "postgres exited: " + (self.root / "postgres.log").read_text()[-2000:]
                    ) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: PostgreSQL's "smart" shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
