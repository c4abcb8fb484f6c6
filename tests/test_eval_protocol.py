"""The stream / held-out protocol of the evaluation on synthetic tables where the truth is
known: RM `a` is right on task x, `b` on task y, `c` a little better than chance on both."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from laser.server.config import load_settings
from laser.server.data import PromptItem
from laser.server.evaluation.analysis import analyse
from laser.server.evaluation.config import Collected, EvalConfig, EvalItem
from laser.server.evaluation.report import write
from laser.server.evaluation.splits import (
    paired_bootstrap,
    split_items,
    stream_orders,
)
from laser.server.evaluation.strategies import Table

N_CAND = 4


def synthetic(n_per_task: int = 80, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    tasks = ["x"] * n_per_task + ["y"] * n_per_task
    n = len(tasks)
    quality = np.zeros((n, N_CAND))
    correct = rng.integers(N_CAND, size=n)
    quality[np.arange(n), correct] = 1.0
    scores = {name: rng.normal(size=(n, N_CAND)) for name in ("a", "b", "c")}
    for i, task in enumerate(tasks):
        good = "a" if task == "x" else "b"
        scores[good][i, correct[i]] = 10.0  # always finds the right one on its task
        if rng.random() < 0.45:  # c: right 45% of the time (+ chance) on both tasks
            scores["c"][i, correct[i]] = 10.0
    onehot = np.array([[1.0, 0.0, 1.0] if t == "x" else [0.0, 1.0, 1.0] for t in tasks])
    return Table(
        tasks=tasks,
        quality=quality,
        scores=scores,
        contexts=onehot,
        regions=2,
        score_seconds={k: np.full(n, 0.01) for k in scores},
    )


def collected(t: Table) -> Collected:
    items = [
        EvalItem(task, PromptItem(f"q{i}", reference="1"), "number", f"q{i}", f"q{i}", [], False)
        for i, task in enumerate(t.tasks)
    ]
    stats = {"engine_generate_calls": 0, "rm_score_calls": 0, "cache_hits": 0}
    noise = np.random.default_rng(9).normal(size=t.quality.shape)
    return Collected(items, [], None, t, noise, stats)


def settings(warmup: int = 2, observe_ms: float = 5.0) -> object:
    bandit = {"alpha": 0.5, "epsilon": 0.05, "warmup": warmup}
    return load_settings(None, bandit={**bandit, "observe_ms_per_candidate": observe_ms})


CONFIG = EvalConfig(tasks=["arithmetic"], orderings=5, alphas=(0.5,), ablation_warmups=(0, 2))


def test_split_is_stratified_disjoint_and_seeded() -> None:
    tasks = ["x"] * 11 + ["y"] * 6
    s = split_items(tasks, 0.5, seed=3)
    assert set(s.stream.tolist()).isdisjoint(s.heldout.tolist())
    assert sorted([*s.stream.tolist(), *s.heldout.tolist()]) == list(range(17))
    held = [tasks[i] for i in s.heldout]
    assert held.count("x") in (5, 6) and held.count("y") == 3
    assert split_items(tasks, 0.5, seed=3).heldout.tolist() == s.heldout.tolist()
    assert split_items(tasks, 0.5, seed=4).heldout.tolist() != s.heldout.tolist()
    orders = stream_orders(s, 3, seed=0)
    assert all(sorted(o.tolist()) == s.stream.tolist() for o in orders)


def test_paired_bootstrap_interval() -> None:
    tasks = ["x"] * 50 + ["y"] * 50
    items = np.arange(100)
    sure = paired_bootstrap(np.full(100, 0.2), items, tasks, ["x", "y"])
    assert sure == {"diff": 0.2, "lo": 0.2, "hi": 0.2}
    coin = np.random.default_rng(0).choice([-1.0, 1.0], size=100)
    ci = paired_bootstrap(coin, items, tasks, ["x", "y"])
    assert ci["lo"] < ci["diff"] < ci["hi"] and ci["lo"] < 0 < ci["hi"]


def test_laser_beats_the_best_single_rm_on_held_out_items(tmp_path: Path) -> None:
    t = synthetic()
    report = analyse(collected(t), CONFIG, settings())
    s = report["strategies"]
    # The truth: a and b are perfect on their own task, c ~0.6; per task a specialist wins.
    assert s["oracle_rm_task"]["heldout"] == 1.0
    assert report["chosen_on_stream"]["best_rm:x"] == "a"
    assert report["chosen_on_stream"]["best_rm:y"] == "b"
    assert s["laser"]["heldout"] > 0.95 > s["best_single"]["heldout"]
    ci = report["ci"]["best_single"]
    assert ci["lo"] > 0.1
    assert report["ci"]["ensemble_mean"]["diff"] > 0
    usage = report["laser_heldout_usage"]
    assert usage["x"]["a"] > 0.95 and usage["y"]["b"] > 0.95
    # These RMs cost 2.5 ms per candidate, within the side-observation budget: LASeR scores
    # all three on every item, as the ensembles do; without side observations, one.
    assert s["laser"]["rm_ms_per_item"] == pytest.approx(30.0)
    assert s["laser"]["rm_calls_per_item"] == 3  # the three observed (one of them deploys)
    assert s["ensemble_mean"]["rm_ms_per_item"] == pytest.approx(30.0)
    alone = analyse(collected(t), CONFIG, settings(observe_ms=0))["strategies"]["laser"]
    assert alone["rm_ms_per_item"] == pytest.approx(10.0)
    # Regret against the best RM per task grows slower than a random RM's.
    assert report["regret"]["laser"][-1] < 0.5 * report["regret"]["random_rm"][-1]
    # The noise RM costs LASeR little; the ablation ran on the stream only.
    assert report["robustness"]["noise"]["laser"]["change"] > -0.03
    assert {g["warmup"] for g in report["ablation"]} == {0, 2}
    assert [m["rm"] for m in report["robustness"]["midway"]] == [
        report["chosen_on_stream"]["best_single_rm"],
        "noise",
    ]
    report.update(command="test", machine="test", wall_seconds=1.0, stats=collected(t).stats)
    report["config"] = {"n": N_CAND, "temperature": 0.8, "max_tokens": 8, "orderings": 5, "seed": 0}
    files = write(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "LASeR minus each baseline" in md and "![regret along the stream](regret.png)" in md
    assert json.loads((tmp_path / "report.json").read_text())["n_items"] == len(t.tasks)
    import matplotlib.image

    for png in [f for f in files if f.endswith(".png")]:
        assert matplotlib.image.imread(tmp_path / png).shape[0] > 100, png


def test_nothing_is_chosen_on_held_out_items() -> None:
    """Make RM c perfect on the held-out items only: what was chosen on the stream (best
    single RM, best RM per task, LASeR's deployed RMs) must not change."""
    t = synthetic()
    split = split_items(t.tasks, CONFIG.heldout_share, CONFIG.seed)
    before = analyse(collected(t), CONFIG, settings())
    c = t.scores["c"].copy()
    for i in split.heldout:
        c[i] = -1.0
        c[i, int(np.argmax(t.quality[i]))] = 10.0
    t2 = replace(t, scores={**t.scores, "c": c})
    after = analyse(collected(t2), CONFIG, settings())
    assert after["chosen_on_stream"] == before["chosen_on_stream"]
    assert after["laser_heldout_usage"] == before["laser_heldout_usage"]
    assert after["strategies"]["rm:c"]["heldout"] == 1.0  # c really is perfect there now


def test_warm_start_tries_every_rm_early_and_helps() -> None:
    # Without side observations (LASeR as published) only the drawn RM learns: the warm
    # start is what makes every RM known.
    t = synthetic()
    cold = analyse(collected(t), CONFIG, settings(warmup=0, observe_ms=0))
    warm = analyse(collected(t), CONFIG, settings(warmup=2, observe_ms=0))
    # With a warm start each RM is tried in the first windows of every task.
    for task, per_rm in warm["shares_over_time"]["by_task"].items():
        assert all(v[0] > 0 for v in per_rm.values()), task
    assert warm["strategies"]["laser"]["stream"] >= cold["strategies"]["laser"]["stream"] - 0.02


def test_pilot_table_shows_each_rm_per_task(tmp_path: Path) -> None:
    from laser.server.evaluation.analysis import pilot_table
    from laser.server.evaluation.report import pilot_markdown, write_pilot

    t = synthetic(n_per_task=20)
    table = pilot_table(collected(t))
    rows = table["rows"]
    assert rows["rm:a"]["x"] == 1.0 and rows["rm:b"]["y"] == 1.0
    assert rows["oracle"] == {"x": 1.0, "y": 1.0}
    assert rows["rm:a"]["y"] < 0.5  # a is no good on y: there is something to select
    md = pilot_markdown(table)
    assert "| single RM: a | 100.0 |" in md
    assert write_pilot(table, tmp_path) == ["pilot.json", "pilot.md"]


def test_table_file_reproduces_the_report_and_feeds_priors(tmp_path: Path) -> None:
    """table.npz (written beside every report) holds everything the numbers come from:
    `eval --replay` recomputes the same report from it, and `priors --replay` learns from it."""
    from laser.server.cli import main
    from laser.server.evaluation.tablefile import load_table, save_table
    from laser.server.priors import load_priors

    t = replace(synthetic(n_per_task=30), kinds=["math"] * 30 + ["qa"] * 30)
    noise = np.random.default_rng(9).normal(size=t.quality.shape)
    save_table(tmp_path / "table.npz", t, noise, {"x": "accuracy", "y": "F1"}, {"model": "m"})
    t2, noise2, metrics, _ = load_table(tmp_path / "table.npz")
    assert t2.rms == t.rms and metrics == {"x": "accuracy", "y": "F1"}
    assert np.array_equal(t2.quality, t.quality) and np.array_equal(noise2, noise)
    col = collected(t)
    a = analyse(col, CONFIG, settings())
    b = analyse(
        Collected([], [], None, t2, noise2, {**col.stats, "metrics": metrics}), CONFIG, settings()
    )
    a.pop("heldout_items"), b.pop("heldout_items")
    assert json.dumps(a["strategies"]) == json.dumps(b["strategies"])
    assert a["ci"] == b["ci"] and a["rules"] == b["rules"]
    main(["priors", "--replay", str(tmp_path), "--out", str(tmp_path / "p.json")])
    priors = load_priors(tmp_path / "p.json")
    assert priors["a"]["math"]["mean"] == 1.0 and priors["b"]["qa"]["mean"] == 1.0
