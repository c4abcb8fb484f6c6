"""The README's 60-second tour works as written, and its output matches what it shows.

The tour's curl commands are read out of README.md, pointed at a live test server on the
embedded default (real HTTP over 127.0.0.1, the real curl) and run in order; `<id>` is the
id the first reply carried, as a reader would paste it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest

from tests.conftest import ROOT, LiveServer


def tour() -> tuple[list[str], dict[str, Any]]:
    """The tour's shell commands (each ```-block starting with `curl`) and its sample reply."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## A 60-second tour", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    commands = [body.strip() for lang, body in blocks if body.lstrip().startswith("curl")]
    sample = next(json.loads(body) for lang, body in blocks if lang == "json")
    return commands, sample


@pytest.mark.skipif(shutil.which("curl") is None, reason="the tour uses curl")
def test_the_readme_tour_runs_as_written(server: LiveServer) -> None:
    commands, sample = tour()
    assert len(commands) == 2, commands
    host = server.url.removeprefix("http://")
    first = subprocess.run(
        ["bash", "-c", commands[0].replace("127.0.0.1:8000", host)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    reply = json.loads(first.stdout)
    # The reply has the fields the README shows (values differ: sampling, timings).
    assert reply.keys() >= sample.keys(), set(sample) - set(reply)
    assert reply["selection"] in ("bandit", "abstain") and reply["usage"]["completion_tokens"] > 0
    second = subprocess.run(
        ["bash", "-c", commands[1].replace("127.0.0.1:8000", host).replace("<id>", reply["id"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    feedback = json.loads(second.stdout)
    assert feedback["id"] == reply["id"] and feedback["applied"] is True, feedback
