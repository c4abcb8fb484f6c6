"""What the bench scripts share when they run `laser-server serve` themselves: a free port
on 127.0.0.1, and waiting until the server answers `/health`. (The scripts are run as files,
`python bench/<name>.py`, so this folder is on their import path.)"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], failure: str, timeout_s: float = 600
) -> None:
    """Return once `url/health` answers 200; exit with `failure` if `proc` ends first or
    `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(failure)
        time.sleep(0.5)
