"""`laser-server bench` in its quick mode against the real engine: every table row is there
and every number is sane. Never a speed assertion (the machine is shared and noisy)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from laser.server.benchmark import VARIANTS, BenchConfig, markdown, run_bench
from laser.server.cli import main as cli_main
from tests.conftest import LoopThread, make_settings


def _numbers(obj: Any) -> Iterator[float]:
    if isinstance(obj, bool):
        return
    if isinstance(obj, int | float):
        yield float(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _numbers(v)


def test_quick_bench_produces_every_row(
    loop_thread: LoopThread, services: Any, tmp_path: Path
) -> None:
    # The shared session engine: LoRA is off by default (see engine.enable_lora).
    config = BenchConfig.quick_config()
    settings = make_settings(tmp_path / "data", engine={"enable_lora": False})
    results = loop_thread.run(run_bench(config, settings, services), timeout=900)
    results = json.loads(json.dumps(results))  # what the JSON file holds

    rows = results["comparison"]["rows"]
    assert set(rows) == set(VARIANTS)
    assert len(results["comparison"]["rm_picked"]) == config.rounds
    assert set(results["comparison"]["rm_picked"]) <= set(results["reward_models"])
    for row in rows.values():
        assert row["mean_ms"] > 0 and row["p50_ms"] > 0
    assert rows["engine_rm"]["vs_engine_rm"] == pytest.approx(1.0)
    assert rows["engine_rm"]["median_round_vs_engine_rm"] == pytest.approx(1.0)
    rounds = results["comparison"]["rounds_ms"]
    assert set(rounds) == set(VARIANTS) and all(len(v) == config.rounds for v in rounds.values())
    assert rows["engine"]["vs_floor"] == pytest.approx(1.0)

    o = results["overhead"]
    assert o["requests"] == 3  # from a client in another process (quick size)
    inproc = results["overhead_in_process_client"]
    assert inproc["requests"] == config.rounds + len(config.ns) * config.ns_requests
    assert set(o["parts_p50_ms"]) == {
        "prepare",
        "select",
        "store",
        "featurize_not_overlapped",
        "app_outside_pipeline",  # from the server's Server-Timing header
        "http_client",
    }
    assert [r["concurrency"] for r in results["concurrency"]] == list(config.concurrency)
    for r in results["concurrency"]:
        assert r["server"]["ok"] + r["server"]["refused"] == r["requests"]
        assert r["server"]["ok"] > 0 and r["engine"]["ok"] == r["requests"]
    assert [r["n"] for r in results["n_scaling"]] == list(config.ns)
    docs = results["doc_scaling"]
    assert [r["target_tokens"] for r in docs] == list(config.doc_tokens)
    for r in docs:
        # The document fits the 1024-token context and the prompt holds it.
        assert 0 < r["document_tokens"] <= r["target_tokens"] < r["prompt_tokens"] <= 1024
        # The loglik RM timed with the prompt from the prefix cache and from scratch.
        assert r["loglik_reuse_ms"] > 0 and r["loglik_scratch_ms"] > 0
        # A new document and the same one again (its prefill from the prefix cache).
        assert r["server_cached_p50_ms"] > 0 and r["engine_cached_p50_ms"] > 0
    # RM scoring per request: LASeR's one RM against every RM of the ensemble.
    sc = results["comparison"]["scoring"]
    k = len(results["reward_models"])
    assert sc["k"] == k and set(sc["per_rm_ms"]) == set(results["reward_models"])
    assert sc["goal"] == pytest.approx(1 / k + 0.1)
    assert sc["laser_vs_ensemble"] == pytest.approx(sc["laser_served_ms"] / sc["ensemble_ms"])
    assert [t["goal"] for t in results["targets"]] == [
        "<= 1.15",
        ">= 2",
        ">= 3",
        ">= 3",
        f"<= {1 / k + 0.1:.2f}",
        "< 5 ms",
    ]  # (the quick run's concurrency tops at 4: no >= 0.95x rows)
    assert all(isinstance(t["met"], bool) for t in results["targets"])
    assert results["machine"]["cores"] >= 1

    numbers = list(_numbers({k: v for k, v in results.items() if k != "config"}))
    assert numbers and all(math.isfinite(v) and v >= 0 for v in numbers)

    table = markdown(results)
    for row in rows.values():
        assert f"| {row['label']} |" in table
    for r in results["concurrency"]:
        assert f"\n| {r['concurrency']} | {r['requests']} |" in table
    for t in results["targets"]:
        assert t["target"] in table
    assert "QUICK mode" in table and "Server overhead" in table
    assert "same document again (cached)" in table and "RM scoring per request" in table


def test_bench_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--out" in out
