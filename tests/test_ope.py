"""Off-policy evaluation: the three estimators on logs whose truth is computed exactly, the
exclusion of forced and fallback rows, clear errors on empty or foreign databases, support
warnings, and `GET /admin/ope` on a live server that has served and received feedback."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from laser.server.cli import main as cli_main
from laser.server.kinds import KINDS
from laser.server.ope import LogError, evaluate, read_log
from laser.server.ope.logdata import LoggedDecision, build
from laser.server.ope.policies import fixed, logged, route, uniform
from laser.server.ope.report import markdown
from laser.server.store.base import Decision
from laser.server.store.sqlite import Store
from tests.conftest import TEACHES, make_settings

ARMS = ["a", "b", "c"]
# Mean reward of each arm per kind of query: each arm is best somewhere.
MEANS = {
    "math": [0.8, 0.3, 0.2],
    "mc": [0.2, 0.3, 0.5],
    "qa": [0.1, 0.9, 0.4],
    "general": [0.5, 0.5, 0.6],
}
PROMPTS = {
    "math": "What is 3 + 4?",
    "mc": "Pick one:\nA) x\nB) y\nC) z",
    "qa": "Who wrote it?",
    "general": "Tell me a story",
}


def context(kind: str) -> np.ndarray:
    x = np.zeros(len(KINDS) + 3)
    x[KINDS.index(kind)] = 1.0
    x[-1] = 1.0
    return x


def synthetic(
    n: int, seed: int, epsilon: float = 0.3, greedy: dict[str, str] | None = None
) -> tuple[list[LoggedDecision], list[str]]:
    """An epsilon-greedy logging policy (greedy arm per kind, else uniform) with Bernoulli
    rewards; returns the rows and each row's kind."""
    rng = np.random.default_rng(seed)
    greedy = greedy or {"math": "b", "mc": "a", "qa": "c", "general": "a"}
    rows, kinds = [], []
    for t in range(n):
        kind = str(rng.choice(KINDS))
        probs = {a: epsilon / len(ARMS) + (1 - epsilon) * (a == greedy[kind]) for a in ARMS}
        arm = str(rng.choice(ARMS, p=[probs[a] for a in ARMS]))
        reward = float(rng.random() < MEANS[kind][ARMS.index(arm)])
        rows.append(
            LoggedDecision(
                id=f"r{t}",
                created=float(t),
                prompt=PROMPTS[kind],
                task=kind,
                has_document=kind == "qa",
                arm=arm,
                propensity=probs[arm],
                selection="bandit",
                context=context(kind),
                probabilities=probs,
                scores=[],
                chosen=0,
                model="synthetic",
                reward=reward,
            )
        )
        kinds.append(kind)
    return rows, kinds


ROUTE = {"math": "a", "mc": "c", "qa": "b", "general": "c"}


def truth(policy_probs: np.ndarray, kinds: list[str]) -> float:
    mu = np.array([MEANS[k] for k in kinds])
    return float((policy_probs * mu).sum(1).mean())


def test_estimators_recover_the_exact_truth_with_honest_intervals() -> None:
    hits: dict[str, int] = {"ips": 0, "snips": 0, "dr": 0}
    errors: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    widths: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    checks = 0
    for seed in range(8):
        rows, kinds = synthetic(2000, seed)
        log = build(rows, ARMS)
        policies = [logged(), uniform(), route("oracle", ROUTE), *(fixed(a) for a in ARMS)]
        report = evaluate(log, policies, n_boot=300, seed=seed)
        for policy, p in zip(policies, report["policies"], strict=True):
            true = truth(policy.probabilities(log), kinds)
            checks += 1
            for est in hits:
                e = p[est]
                hits[est] += int(e["low"] <= true <= e["high"])
                errors[est].append(abs(e["value"] - true))
                widths[est].append((e["high"] - e["low"]) / 2)
    for est in hits:
        # 95% intervals: nearly all of 48 hold the truth, and the typical error is well
        # inside the interval's half-width (about 0.4 of it for a normal estimate).
        assert hits[est] / checks >= 0.85, (est, hits[est], checks)
        assert np.mean(errors[est]) < 0.75 * np.mean(widths[est]), est
    # With a reward model that fits, DR is at least as accurate as IPS.
    assert np.mean(errors["dr"]) <= np.mean(errors["ips"])
    # The routing oracle is the best policy, and its estimate says so.
    assert report["policies"][2]["dr"]["value"] > max(
        p["dr"]["high"] for p in report["policies"] if p["policy"].startswith("rm:")
    )


def test_policies_the_log_cannot_support_are_flagged_not_estimated() -> None:
    # Logged greedily (epsilon 0): arm "c" is never tried on math or mc queries.
    rows, _ = synthetic(400, 0, epsilon=0.0, greedy={k: "a" for k in KINDS})
    log = build(rows, ARMS)
    report = evaluate(log, [fixed("a"), fixed("c")], n_boot=200)
    by = {p["policy"]: p for p in report["policies"]}
    assert by["rm:a"]["status"] == "ok" and by["rm:a"]["ess"] == pytest.approx(400)
    assert by["rm:c"]["status"] == "unsupported" and by["rm:c"]["unsupported"] == 1.0
    table = markdown(report)
    assert "| rm:c | n/a | n/a | n/a |" in table and "no estimate is given" in table


def _decision(i: int, arm: str, selection: str, probs: dict[str, float]) -> Decision:
    return Decision(
        id=f"d{i}",
        created=time.time(),
        prompt="What is 1 + 2?",
        task="math",
        has_document=False,
        arm=arm,
        propensity=probs.get(arm, 0.0),
        selection=selection,
        context=context("math"),
        scores=[0.0, 1.0],
        chosen=1,
        model="m",
        drawn_arm=None if selection == "forced" else arm,
        probabilities=probs,
    )


def test_forced_and_fallback_rows_are_reported_and_excluded(tmp_path: Path) -> None:
    probs = {"a": 0.5, "b": 0.5}

    async def fill(store: Store, with_bad_rows: bool) -> None:
        for i in range(60):
            arm = "a" if i % 2 else "b"
            await store.add_decision(_decision(i, arm, "bandit", probs))
            await store.add_feedback(f"d{i}", 1.0 if arm == "a" else 0.0)
        if with_bad_rows:  # rows that would make "b" look perfect if they were counted
            for i in range(60, 90):
                how = "forced" if i % 2 else "fallback"
                await store.add_decision(_decision(i, "b", how, probs))
                await store.add_feedback(f"d{i}", 1.0)
            await store.add_decision(_decision(90, "a", "bandit", probs))  # no feedback

    values = []
    for bad in (False, True):
        store = Store(tmp_path / f"bad{bad}" / "laser.db")
        asyncio.run(fill(store, bad))
        store.close()
        log = read_log(tmp_path / f"bad{bad}")
        report = evaluate(log, [fixed("b")], n_boot=200)
        values.append(report["policies"][0]["dr"]["value"])
        if bad:
            assert report["excluded"] == {"forced": 15, "fallback": 15, "no_feedback": 1}
            assert report["n"] == 60
    assert values[0] == values[1] == pytest.approx(0.0, abs=1e-9)


def test_clear_errors_on_empty_and_foreign_databases(tmp_path: Path) -> None:
    Store(tmp_path / "empty" / "laser.db").close()
    with pytest.raises(LogError, match="no decision drawn by the bandit has feedback"):
        read_log(tmp_path / "empty")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (id INTEGER)")
    with pytest.raises(LogError, match="not a laser-server database"):
        read_log(foreign)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LogError, match="not a laser-server database"):
        read_log(junk)
    with pytest.raises(LogError, match="no such file"):
        read_log(tmp_path / "missing")
    with pytest.raises(SystemExit) as stop:
        cli_main(["ope", "--log", str(foreign)])
    assert "not a laser-server database" in str(stop.value.code)


def test_admin_ope_on_a_server_that_served_and_got_feedback(
    start_server: Any, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, api_key="k", bandit={"epsilon": 0.2, "warmup": 1})
    live = start_server(settings)
    key = {"Authorization": "Bearer k"}
    try:
        with httpx.Client(base_url=live.url, headers=key, timeout=120) as c:
            assert c.get("/admin/ope").status_code == 409  # nothing logged yet
            assert httpx.get(live.url + "/admin/ope").status_code == 401
            for i in range(14):
                body = {"prompt": f"What is {i} + 2?", **TEACHES, "max_tokens": 6}
                if i == 13:
                    body["reward_model"] = "agreement"  # forced: reported, excluded
                gen = c.post("/generate", json=body).json()
                c.post("/feedback", json={"id": gen["id"], "reward": float(i % 3 == 0)})
            r = c.get("/admin/ope", params={"bootstrap": 200})
            assert r.status_code == 200, r.text
            report = r.json()
            assert report["n"] == 13 and report["excluded"] == {"forced": 1}
            names = [p["policy"] for p in report["policies"]]
            assert names[0] == "logged" and "rm:arith" in names and "uniform" in names
            assert any(n.startswith("linucb(") for n in names)
            assert c.get("/admin/ope", params={"bootstrap": 5}).status_code == 400
    finally:
        live.stop()
    # The CLI reads the same file once the server is gone.
    out = tmp_path / "ope"
    cli_main(["ope", "--data-dir", str(tmp_path), "--bootstrap", "200", "--out", str(out)])
    assert (out / "ope.png").stat().st_size > 0 and "| logged |" in (out / "ope.md").read_text()
