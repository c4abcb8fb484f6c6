"""What the training bench scripts share: one `laser-server train` run in a temporary output
folder, its step records read back. (Run as files, `python bench/<name>.py`, so this folder
is on their import path.)"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def train_steps(label: str, flags: list[str], timeout: float) -> tuple[list[dict[str, Any]], float]:
    """Run `laser-server train <flags> --output-dir <temp>`; its `steps.jsonl` records and the
    run's wall time. A failed run ends the bench with its stderr's tail."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{label}-") as out:
        cmd = [str(ROOT / ".venv" / "bin" / "laser-server"), "train", *flags, "--output-dir", out]
        print(f"[{label}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"[{label}] failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        steps = [json.loads(line) for line in Path(out, "steps.jsonl").read_text().splitlines()]
    return steps, wall
