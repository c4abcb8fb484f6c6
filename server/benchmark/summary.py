"""Summaries of a bench run's raw timings: the server's own overhead, the loglik RM's cost
with and without the prefix cache, and each target met or not."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from laser.server.benchmark.config import VARIANTS, pct


def loglik_row(loglik: dict[str, list[float]]) -> dict[str, float]:
    if not loglik["reuse"]:
        return {}
    reuse, scratch = statistics.fmean(loglik["reuse"]), statistics.fmean(loglik["scratch"])
    return {
        "loglik_reuse_ms": reuse,
        "loglik_scratch_ms": scratch,
        "loglik_speedup": scratch / reuse,
    }


def overhead(sequential: Sequence[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """The server's own cost per request: client wall time minus generation and scoring
    (what is left: HTTP, JSON, prompt templating, featurizing beyond the generation it
    overlaps, bandit select, the SQLite commit). Parts are server-side stage p50s."""
    replies = [r for _, r in sequential]
    own = [w - r["timings_ms"]["generate"] - r["timings_ms"]["score"] for w, r in sequential]
    parts: dict[str, float] = {}
    for stage in ("prepare", "select", "store"):
        parts[stage] = pct([r["timings_ms"].get(stage, 0.0) for r in replies], 50)
    # Featurizing runs beside generation; only what outlasts it adds to the wall time.
    parts["featurize_not_overlapped"] = pct(
        [max(0.0, r["timings_ms"]["featurize"] - r["timings_ms"]["generate"]) for r in replies],
        50,
    )
    if all("server_app_ms" in r for r in replies):
        # Inside the app but outside the pipeline's timer: routing, body validation, auth,
        # admission, building and serialising the reply.
        parts["app_outside_pipeline"] = pct(
            [r["server_app_ms"] - r["timings_ms"]["total"] for r in replies], 50
        )
        # Outside the app: the client, HTTP on 127.0.0.1, uvicorn's parsing and writing.
        parts["http_client"] = pct([w - r["server_app_ms"] for w, r in sequential], 50)
    else:
        parts["http_json_client"] = pct([w - r["timings_ms"]["total"] for w, r in sequential], 50)
    return {
        "requests": len(own),
        "p50_ms": pct(own, 50),
        "p99_ms": pct(own, 99),
        "parts_p50_ms": parts,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, measured."""
    rows = results["comparison"]["rows"]
    server = rows["server"]["mean_ms"]
    out = [
        {
            "target": "best-of-n end to end within 1.15x of engine + one RM's scoring",
            "measured": rows["server"]["vs_engine_rm"],
            "goal": "<= 1.15",
            "met": rows["server"]["vs_engine_rm"] <= 1.15,
        },
        {
            "target": f"throughput >= 2x the ensemble of {len(results['reward_models'])} RMs",
            "measured": rows["ensemble"]["mean_ms"] / server,
            "goal": ">= 2",
            "met": rows["ensemble"]["mean_ms"] / server >= 2,
        },
    ]
    for key in ("naive_loop", "naive_hf"):
        if key in rows:
            ratio = rows[key]["mean_ms"] / server
            out.append(
                {
                    "target": f"throughput >= 3x the {VARIANTS[key].split(': ')[1]}",
                    "measured": ratio,
                    "goal": ">= 3",
                    "met": ratio >= 3,
                }
            )
    sc = results["comparison"].get("scoring")
    if sc:
        out.append(
            {
                "target": f"RM scoring per request <= 1/K + 10% of the ensemble's (K={sc['k']})",
                "measured": sc["laser_vs_ensemble"],
                "goal": f"<= {sc['goal']:.2f}",
                "met": sc["laser_vs_ensemble"] <= sc["goal"],
            }
        )
    for row in results["concurrency"]:
        if row["concurrency"] >= 16:
            ratio = row["throughput_vs_engine"]
            out.append(
                {
                    "target": f"throughput at concurrency {row['concurrency']} >= 0.95x the "
                    "engine alone",
                    "measured": ratio,
                    "goal": ">= 0.95",
                    "met": ratio >= 0.95,
                }
            )
    p50 = results["overhead"]["p50_ms"]
    out.append(
        {
            "target": "server overhead p50 < 5 ms",
            "measured": p50,
            "goal": "< 5 ms",
            "met": p50 < 5,
        }
    )
    return out
