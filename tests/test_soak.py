"""The soak bench, shortened to one minute: a real `laser-server serve` under mixed traffic
(generation with and without documents, streamed OpenAI chat, feedback, admin changes,
/health polls) answers without unexpected errors and loses no acknowledged feedback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import MODEL_CACHE, ROOT


def test_one_minute_soak_has_no_errors_and_loses_no_feedback(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "soak.py"),
        "--minutes",
        "1",
        "--out",
        str(out),
        "--cache-dir",
        str(MODEL_CACHE),
        # One minute is too short for a memory-growth verdict (allocator and caches still
        # settle: ~9-11 % here, most of it one early step); the 30-minute run keeps 10 %.
        "--max-rss-growth",
        "25",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    report = json.loads(out.read_text())
    assert report["errors"]["unexpected_total"] == 0, report["errors"]
    served = report["served"]
    for kind in ("generate", "generate_doc", "chat_stream", "feedback", "admin", "health"):
        assert served[kind] > 0, (kind, served)
    assert report["feedback"]["acknowledged"] > 0
    assert report["feedback"]["missing"] == 0, report["feedback"]
    assert report["decisions"]["missing"] == 0, report["decisions"]
    assert report["server_exit_code"] == 0
