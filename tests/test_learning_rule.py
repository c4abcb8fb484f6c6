"""The learning rule serving, training and the evaluation share (`observe.py`): side
observations, abstaining RMs, ensemble arms, Thompson sampling and priors, on cases where
the right result is known, and through a real server on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from laser.bandit import LinUCB, LinUCBConfig, from_bytes, to_bytes
from laser.server.evaluation.deployment import headline_by_rule
from laser.server.evaluation.splits import split_items, stream_orders
from laser.server.evaluation.strategies import LaserSettings, Table, learn_laser
from laser.server.observe import Observed, choose, credits, observe, same_answer, top_pick
from laser.server.priors import (
    PriorsError,
    apply_priors,
    kind_context,
    learn_priors,
    load_priors,
    save_priors,
)
from laser.server.rms.ensemble import EnsembleRM
from tests.conftest import TEACHES, make_settings


# -- the rule on hand-made decisions ----------------------------------------------------------
def test_a_feedback_teaches_every_rm_whose_pick_was_the_returned_answer() -> None:
    texts = ["7 + 5 = 12, so 12", "It is 12.", "13", "I do not know"]
    scores = {
        "arith": [3.0, 0.0, 0.0, 0.0],  # chose candidate 0: returned
        "loglik": [0.1, 0.9, 0.2, 0.3],  # chose 1: another text, the same final answer
        "agreement": [0.0, 0.0, 1.0, 0.0],  # chose 2: another answer
        "grounding": [0.0, 0.0, 0.0, 0.0],  # no documents: no choice at all
    }
    obs = observe("arith", scores, texts, chosen=0, kind="number")
    assert obs.agree == ["loglik"] and obs.abstain == ["grounding"]
    assert credits("arith", 1.0, obs, abstain_reward=0.0) == [
        ("arith", 1.0),
        ("loglik", 1.0),
        ("grounding", 0.0),
    ]
    # Open-ended queries (no kind) agree only on the very same text.
    assert not same_answer("It is 12.", "12", None) and same_answer("12", "12", None)
    assert Observed.from_json(obs.to_json()) == obs
    # An RM that scores all alike abstains; the next RM of the order chooses.
    assert top_pick([1.0, 1.0]) is None and top_pick([0.0, 2.0]) == 1
    assert choose(["grounding", "arith"], scores) == "arith"
    assert choose(["grounding"], scores) is None


def _table(n_per_task: int = 60, seed: int = 0) -> Table:
    """Task x: only `a` finds the right candidate; task y: only `b`; `flat` never has a
    preference; answer keys make candidates 0 and 1 the same answer."""
    rng = np.random.default_rng(seed)
    tasks = ["x"] * n_per_task + ["y"] * n_per_task
    n = len(tasks)
    quality = np.zeros((n, 4))
    right = rng.integers(2, 4, size=n)
    quality[np.arange(n), right] = 1.0
    scores = {k: rng.normal(size=(n, 4)) for k in ("a", "b")}
    for i, task in enumerate(tasks):
        scores["a" if task == "x" else "b"][i, right[i]] = 9.0
        scores["b" if task == "x" else "a"][i, 5 - right[i]] = 9.0  # the other wrong one
    scores["flat"] = np.zeros((n, 4))
    onehot = np.array([[1.0, 0.0, 1.0] if t == "x" else [0.0, 1.0, 1.0] for t in tasks])
    return Table(
        tasks=tasks,
        quality=quality,
        scores=scores,
        contexts=onehot,
        regions=2,
        score_seconds={k: np.full(n, 0.004) for k in scores},  # 1 ms per candidate: cheap
        keys=[["p", "p", "q", "r"] for _ in tasks],
        kinds=["math" if t == "x" else "qa" for t in tasks],
    )


def test_side_observations_teach_arms_that_were_never_drawn() -> None:
    t = _table()
    order = np.arange(len(t.tasks))
    rule = LaserSettings(alpha=0.5, epsilon=0.0, observe_ms=5.0, abstain=True)
    bandit, _ = learn_laser(t, order, 0, rule)
    # Each item teaches the RM that chose and the abstaining one (0, every item); an RM
    # that chose another answer is not observed (its reward is unknown).
    x, y = t.contexts[0], t.contexts[-1]
    pred = bandit.predict(x)
    assert pred["a"]["expectation"] > 0.8 and pred["flat"]["expectation"] < 0.1
    assert bandit.predict(y)["b"]["expectation"] > 0.8
    assert bandit.pulls[bandit.index("flat")] == len(t.tasks)  # observed on every item
    # The published rule (no side observations, no abstention) learns only what it drew.
    published, _ = learn_laser(t, order, 0, LaserSettings(alpha=0.5, epsilon=0.0))
    assert sum(published.pulls) == len(t.tasks) < sum(bandit.pulls)


def test_an_abstaining_rm_cannot_win_a_kind_of_query() -> None:
    t = _table()
    rule = LaserSettings(alpha=0.5, epsilon=0.0, observe_ms=5.0, abstain=True)
    _, run = learn_laser(t, np.arange(len(t.tasks)), 0, rule)
    assert "flat" not in run.arms  # it always passed to the next RM
    # Without abstention `flat` returns candidate 0 and earns its luck (0 here).
    _, plain = learn_laser(t, np.arange(len(t.tasks)), 0, LaserSettings(alpha=0.5, epsilon=0.0))
    assert "flat" in plain.arms


def test_ensemble_arm_scores_are_its_members_normalised_mean() -> None:
    rm = EnsembleRM("mix", {})
    assert rm.combine([[0.0, 10.0, 5.0], [2.0, 2.0, 2.0]]) == [0.25, 0.75, 0.5]
    t = _table().with_ensemble_arm("mix", ["a", "b"])
    assert t.ensemble_members == {"mix": ["a", "b"]} and "mix" in t.rms
    assert np.allclose(t.score_seconds["mix"], 0.008)  # costs what its members cost


# -- bandit: Thompson sampling and priors -------------------------------------------------
def test_thompson_sampling_logs_a_distribution_and_follows_the_posterior() -> None:
    cfg = LinUCBConfig(dim=1, alpha=0.3, policy="thompson", ts_draws=400, seed=1)
    bandit = LinUCB(cfg, ["good", "bad"])
    for _ in range(30):
        bandit.update("good", [1.0], 1.0)
        bandit.update("bad", [1.0], 0.0)
    picks = [bandit.select([1.0]) for _ in range(50)]
    assert all(abs(sum(s.probabilities.values()) - 1.0) < 1e-9 for s in picks)
    assert sum(s.arm == "good" for s in picks) >= 48
    assert picks[0].probabilities["good"] > 0.95
    with pytest.raises(ValueError):
        LinUCBConfig(dim=1, policy="greedy")


def test_priors_round_trip_learnt_saved_loaded_used(tmp_path: Path) -> None:
    kinds = ["math"] * 4 + ["qa"] * 4
    quality = np.array([[1.0, 0.0]] * 8)
    scores = {
        "arith": np.array([[1.0, 0.0]] * 4 + [[0.0, 0.0]] * 4),  # right on math, abstains on qa
        "grounding": np.array([[0.0, 0.0]] * 4 + [[1.0, 0.0]] * 4),  # the reverse
    }
    priors = learn_priors(kinds, quality, scores)
    assert priors["arith"] == {"math": {"mean": 1.0, "items": 4}, "qa": {"mean": 0.0, "items": 4}}
    path = tmp_path / "priors.json"
    save_priors(path, priors, {"command": "test"})
    loaded = load_priors(path)
    assert loaded == priors
    bandit = LinUCB(LinUCBConfig(dim=7, alpha=0.5, warmup=2, regions=4), ["arith", "grounding"])
    assert apply_priors(bandit, loaded, max_strength=8.0) == 4
    math_x = kind_context("math", 7, 4)
    qa_x = kind_context("qa", 7, 4)
    pred = bandit.predict(math_x)
    assert pred["arith"]["expectation"] > 0.7 > pred["grounding"]["expectation"]
    assert bandit.predict(qa_x)["grounding"]["expectation"] > 0.7
    # The priors stand in for the warm start: UCB chooses from the first query on.
    assert bandit.select(math_x).arm == "arith" and not bandit.select(math_x).explored
    assert bandit.pulls == [0, 0]  # priors are not feedback
    # Saved with the state; a restored bandit does not fold them in twice.
    restored = LinUCB(bandit.config)
    restored.load_state_dict(from_bytes(to_bytes(bandit)))
    assert apply_priors(restored, loaded, max_strength=8.0) == 0
    assert restored.predict(math_x) == bandit.predict(math_x)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "laser.priors", "version": 1}))
    with pytest.raises(PriorsError):
        load_priors(tmp_path / "bad.json")


def test_headline_rule_keeps_tasks_with_room_to_select() -> None:
    t = _table()
    # Task y: every candidate equally good, so no selection can matter there.
    rows = np.asarray(t.tasks) == "y"
    t.quality[rows] = 0.5
    split = split_items(t.tasks, 0.5, seed=0)
    keep, gaps = headline_by_rule(t, split, min_gap=0.10)
    assert keep == ["x"] and gaps["y"] == 0.0 and gaps["x"] >= 0.10
    # A task with no held-out items cannot be scored: never in the headline.
    stream_only = split_items(t.tasks, 0.0, seed=0)
    assert headline_by_rule(t, stream_only, min_gap=0.10)[0] == []
    assert len(stream_orders(split, 2, 0)) == 2


# -- through a real server ----------------------------------------------------------------
def _post(url: str, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_served_feedback_updates_agreeing_rms_and_survives_restart(
    start_server: Any, tmp_path: Path
) -> None:
    """The embedded default: the cheap RMs score every request, a feedback updates every RM
    whose pick was the returned answer, the decision logs it, and a restarted server (replay
    from SQLite) predicts exactly as before."""
    # Side observations on (off by default): the built-in text RMs score every request.
    bandit = {"epsilon": 0.0, "snapshot_every": 1000, "observe_ms_per_candidate": 5.0}
    settings = make_settings(tmp_path, bandit=bandit)
    live = start_server(settings)
    try:
        prompt = "Ana has 3 pens and buys 4 more. How many pens does she have?"
        for _ in range(4):
            gen = _post(live.url, "/generate", {"prompt": prompt, **TEACHES, "max_tokens": 12})
            _post(live.url, "/feedback", {"id": gen["id"], "reward": 1.0})
        arms = httpx.get(live.url + "/admin/reward-models", timeout=60).json()
        updates = {name: a["updates"] for name, a in arms.items()}
        # More updates than feedbacks: side observations (agreeing or abstaining RMs).
        assert sum(updates.values()) > 4, updates
        predicted = _post(live.url, "/bandit/predict", {"prompt": prompt})
    finally:
        live.stop()
    again = start_server(settings)
    try:
        assert _post(again.url, "/bandit/predict", {"prompt": prompt}) == predicted
    finally:
        again.stop()


def test_server_starts_from_priors(start_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "priors.json"
    priors = {
        "arith": {"math": {"mean": 0.9, "items": 50}},
        "loglik": {"math": {"mean": 0.1, "items": 50}},
    }
    save_priors(path, priors, {"command": "test"})
    settings = make_settings(tmp_path, bandit={"priors": str(path), "epsilon": 0.0})
    live = start_server(settings)
    try:
        pred = _post(live.url, "/bandit/predict", {"prompt": "What is 12 + 7?", "task": "math"})
        arms = pred["arms"]
        assert arms["arith"]["expectation"] > 0.7 and arms["loglik"]["expectation"] < 0.2
    finally:
        live.stop()
    # A file that cannot be read is a configuration error before anything loads.
    with pytest.raises(ValidationError, match="cannot read priors"):
        make_settings(tmp_path / "b", bandit={"priors": str(tmp_path / "missing.json")})
