"""The evaluation harness: strategies and metrics on hand-checkable tables (no model), the data
builders, and a small suite end to end on the real embedded engine (`services`)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from laser.server.data import DataError, load_prompts
from laser.server.evaluation import data as eval_data
from laser.server.evaluation.grading import grade
from laser.server.evaluation.splits import (
    heldout_values,
    run_laser_split,
    split_items,
    stream_orders,
)
from laser.server.evaluation.strategies import (
    LaserSettings,
    Table,
    normalised,
    run_ensemble_mean,
    run_ensemble_vote,
    run_first,
    run_fixed,
    run_laser,
    run_oracle,
    run_oracle_rm_query,
)


def permutation(n_items: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n_items)


def table(quality: list[list[float]], tasks: list[str] | None = None, **scores: Any) -> Table:
    q = np.array(quality, dtype=float)
    n_items = len(q)
    return Table(
        tasks=tasks or ["t"] * n_items,
        quality=q,
        scores={k: np.array(v, dtype=float) for k, v in scores.items()},
        contexts=np.ones((n_items, 1)),
        score_seconds={k: np.full(n_items, 0.5 + i) for i, k in enumerate(scores)},
    )


# -- strategies on given score matrices ------------------------------------------------------
def test_single_rm_picks_its_argmax_and_the_first_on_ties() -> None:
    t = table([[0, 1, 0], [1, 0, 1]], a=[[0, 5, 1], [2, 2, 0]])
    run = run_fixed(t, "a")
    assert run.picks.tolist() == [1, 0]  # ties go to the lowest index, as in serving
    assert run.quality.tolist() == [1.0, 1.0]
    assert run.rm_calls == 2 and run.rm_seconds == pytest.approx(1.0)


def test_score_ensemble_normalises_per_query_and_can_pick_what_no_single_rm_picks() -> None:
    assert normalised(np.array([[1.0, 3.0, 2.0], [4.0, 4.0, 4.0]])).tolist() == [
        [0.0, 1.0, 0.5],
        [0.5, 0.5, 0.5],
    ]
    # a: [0, 1, .9], b: [1, 0, .9] after normalising -> mean [.5, .5, .9]: candidate 2,
    # which neither RM ranks first. The scales differ by 1000x and must not matter.
    t = table([[0, 0, 1]], a=[[0, 10, 9]], b=[[10000, 0, 9000]])
    assert run_fixed(t, "a").picks[0] == 1 and run_fixed(t, "b").picks[0] == 0
    ens = run_ensemble_mean(t)
    assert ens.picks[0] == 2 and ens.quality[0] == 1.0
    assert ens.rm_calls == 2 and ens.rm_seconds == pytest.approx(0.5 + 1.5)


def test_vote_ensemble_takes_the_majority_top_pick_and_breaks_ties_by_the_mean() -> None:
    t = table([[0, 1, 0]], a=[[0, 9, 1]], b=[[0, 9, 1]], c=[[9, 0, 1]])
    assert run_ensemble_vote(t).picks[0] == 1  # two votes against one
    # a votes for 0, b for 1; normalised a=[1, 0, .5], b=[0, 1, .9], mean [.5, .5, .7]:
    # candidate 2 has the best mean but no vote; 0 and 1 tie on votes and on the mean.
    t2 = table([[1, 0, 0]], a=[[10, 0, 5]], b=[[0, 10, 9]])
    means = (normalised(t2.scores["a"]) + normalised(t2.scores["b"])) / 2
    assert means[0].tolist() == [0.5, 0.5, 0.7]
    assert run_ensemble_vote(t2).picks[0] == 0  # votes 1-1; mean 0.5 vs 0.5: lowest index


def test_first_sample_and_oracle() -> None:
    t = table([[0, 1, 0.5], [0.2, 0.1, 0.0]], a=[[0, 0, 1], [0, 1, 0]])
    assert run_first(t).quality.tolist() == [0.0, 0.2]
    assert run_oracle(t).quality.tolist() == [1.0, 0.2]
    assert run_first(t).rm_calls == 0


def test_oracle_bounds_every_strategy_on_random_tables() -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        n_items, n = 40, 6
        quality = (rng.random((n_items, n)) < 0.3).astype(float)
        t = Table(
            tasks=["x"] * 20 + ["y"] * 20,
            quality=quality,
            scores={
                k: rng.normal(size=(n_items, n)) + quality * s for k, s in [("a", 1), ("b", 0)]
            },
            contexts=rng.normal(size=(n_items, 4)),
            greedy_quality=quality[:, 0],
        )
        split = split_items(t.tasks, 0.5, seed=1)
        laser = run_laser_split(
            t, split, stream_orders(split, 3, seed=1), 1, LaserSettings(), ["x", "y"]
        )
        values, _ = heldout_values(t, split, laser.heldout, ["x", "y"])
        held = split.heldout
        oracle = values["oracle"][held]
        for name, v in values.items():
            assert np.all(v[held] <= oracle + 1e-12), name
        # The per-query RM oracle bounds every single-RM and RM-selection strategy.
        rm_oracle = run_oracle_rm_query(t).quality[held]
        for name in ("laser", "random_rm", "best_single", "rm:a", "rm:b"):
            assert np.all(values[name][held] <= rm_oracle + 1e-12), name


def two_task_table(n_items: int = 200, seed: int = 0) -> Table:
    """RM `a` finds the correct candidate on task x and picks a wrong one on y; `b` the reverse.
    The context says which task an item is."""
    rng = np.random.default_rng(seed)
    n = 4
    quality = np.zeros((n_items, n))
    correct = rng.integers(n, size=n_items)
    quality[np.arange(n_items), correct] = 1.0
    wrong = (correct + 1) % n
    tasks = ["x" if i % 2 == 0 else "y" for i in range(n_items)]
    a, b = np.zeros((n_items, n)), np.zeros((n_items, n))
    for i, task in enumerate(tasks):
        good, bad = (a, b) if task == "x" else (b, a)
        good[i, correct[i]] = 1.0
        bad[i, wrong[i]] = 1.0
    contexts = np.array([[1.0, 0.0] if task == "x" else [0.0, 1.0] for task in tasks])
    return Table(tasks=tasks, quality=quality, scores={"a": a, "b": b}, contexts=contexts)


def test_laser_learns_which_rm_suits_which_context() -> None:
    t = two_task_table()
    order = permutation(len(t.tasks), seed=3)
    laser = run_laser(t, order, seed=3, settings=LaserSettings(alpha=0.5, epsilon=0.0))
    # Each single RM is right on half the items, so a random RM is too (in expectation).
    rnd = np.mean([run_fixed(t, rm).quality for rm in t.rms], axis=0)
    assert run_fixed(t, "a").quality.mean() == 0.5 == run_fixed(t, "b").quality.mean()
    assert laser.quality.mean() > 0.9 > 0.7 > rnd.mean()
    late = [laser.arms[i] for i in order[100:]]
    want = [("a" if t.tasks[i] == "x" else "b") for i in order[100:]]
    assert late == want  # after 100 items it always picks the right RM
    assert laser.rm_calls == len(t.tasks)  # one RM per item
    # Without the context (a constant) it cannot tell the tasks apart.
    blind = run_laser(t, order, 3, LaserSettings(alpha=0.5, epsilon=0.0, context="bias"))
    assert blind.quality.mean() < 0.65


def test_an_rm_added_midway_is_absent_before_and_taken_up_where_it_is_good() -> None:
    t = two_task_table()
    order = permutation(len(t.tasks), seed=5)
    # Only `a` (right on task x) at first; `b` (right on task y) joins at step 100.
    run = run_laser(
        t, order, seed=5, settings=LaserSettings(alpha=0.5, epsilon=0.0), add_midway=("b", 100)
    )
    assert {run.arms[i] for i in order[:100]} == {"a"}
    tail = order[150:]
    on_y = [run.arms[i] for i in tail if t.tasks[i] == "y"]
    on_x = [run.arms[i] for i in tail if t.tasks[i] == "x"]
    assert on_y.count("b") / len(on_y) > 0.9 and on_x.count("a") / len(on_x) > 0.9
    assert run.quality[order[:100]].mean() == pytest.approx(0.5, abs=0.1)
    assert run.quality[tail].mean() > 0.9


def test_orderings_are_seeded_and_differ() -> None:
    t = two_task_table(60)
    split = split_items(t.tasks, 0.5, seed=0)
    o1, o2 = stream_orders(split, 3, seed=0), stream_orders(split, 3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(o1, o2, strict=True))
    assert not np.array_equal(o1[0], o1[1])
    r1 = run_laser_split(t, split, o1, 0, LaserSettings(), ["x", "y"])
    r2 = run_laser_split(t, split, o2, 0, LaserSettings(), ["x", "y"])
    assert r1.stream_steps.tolist() == r2.stream_steps.tolist()
    assert len(r1.heldout_macro) == 3
    values, _ = heldout_values(t, split, r1.heldout, ["x", "y"])
    assert "greedy" not in values  # no greedy data in this table


# -- metrics ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ref", "kind", "quality", "exact"),
    [
        ("12 + 7 = 19", "19", "number", 1.0, 1.0),
        ("12 + 7 = 18", "19", "number", 0.0, 0.0),
        ("The answer is (B).", "B", "choice", 1.0, 1.0),
        ("The answer is (C).", "B", "choice", 0.0, 0.0),
        ("Pebble Works.", "Pebble Works", "span", 1.0, 1.0),
        ("It was Pebble Works. Then more.", "Pebble Works", "span", 2 / 3, 0.0),
        ("fennel and sumac", "fennel and nutmeg", "span", 2 / 3, 0.0),
        ("No idea.", "Osaka", "span", 0.0, 0.0),
    ],
)
def test_grade(text: str, ref: str, kind: str, quality: float, exact: float) -> None:
    g = grade(text, ref, kind)
    assert g.quality == pytest.approx(quality) and g.exact == exact


# -- data ------------------------------------------------------------------------------------
def test_builtin_tasks_are_seeded_and_well_formed() -> None:
    for task in eval_data.TASKS:
        a, b = eval_data.build_task(task, 5, seed=1), eval_data.build_task(task, 5, seed=1)
        assert a == b and len(a) == 5 and all(it.reference for it in a), task
        assert eval_data.build_task(task, 5, seed=2) != a, task
    for it in eval_data.gsm8k_items(5):
        assert re.fullmatch(r"-?\d+(\.\d+)?", it.reference or "")
    for it in eval_data.gpqa_items(5):
        # The reference letter's option is the data set's correct answer (checked by the
        # option text appearing in the CSV's "Correct Answer" column via the builder).
        letters = re.findall(r"^([A-D])\) ", it.prompt, flags=re.M)
        assert letters == ["A", "B", "C", "D"] and it.reference in letters


def test_qa_facts_sit_where_the_ids_say() -> None:
    for it in eval_data.longqa_items(6, seed=3):
        depth = float(it.id.split("-d")[1])  # type: ignore[union-attr]
        doc = it.documents[0]
        pos = doc.find(it.reference)  # type: ignore[arg-type]
        assert pos >= 0
        assert abs(pos / len(doc) - depth) < 0.2, (it.id, pos / len(doc))
    for it in eval_data.multidoc_qa_items(6, seed=3):
        holders = [int(k) - 1 for k in it.id.split("docs")[1].split(",")]  # type: ignore[union-attr]
        v1, v2 = it.reference.split(" and ")  # type: ignore[union-attr]
        assert len(it.documents) == 3 and v1 != v2
        assert v1 in it.documents[holders[0]] and v2 in it.documents[holders[1]]
        other = ({0, 1, 2} - set(holders)).pop()
        assert v1 not in it.documents[other] and v2 not in it.documents[other]


def test_task_names_expand_and_unknown_ones_are_named() -> None:
    assert eval_data.expand_tasks("math,longqa,arithmetic") == ["arithmetic", "gsm8k", "longqa"]
    assert eval_data.expand_tasks("all") == list(eval_data.TASKS)
    with pytest.raises(DataError, match="'nope'"):
        eval_data.expand_tasks("qa,nope")


def test_user_jsonl_errors_name_the_line(tmp_path: Path, capsys: Any) -> None:
    from laser.server.cli import main

    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"prompt": "What is 2+2?", "reference": "4"}\n\n{"prompt": "no answer"}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"mine\.jsonl:3: evaluation needs a `reference`"):
        load_prompts(path, require_reference=True)
    assert len(load_prompts(path)) == 2  # training may use prompts without references
    path.write_text('{"prompt": "ok", "reference": "1"}\n{"prompt": \n', encoding="utf-8")
    # The CLI checks the file before loading any model, and exits with the line.
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--prompts", str(path), "--out", str(tmp_path / "out")])
    assert "mine.jsonl:2: not valid JSON" in str(exc.value)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--tasks", "arithmetic,bogus"])
    assert "'bogus'" in str(exc.value)


# -- end to end on the real engine -----------------------------------------------------------
class CountingEngine:
    """The real engine, counting the calls that reach it."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.generate_calls: list[int] = []  # n of each call
        self.loglik_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def generate(self, prompt: str, sampling: Any, adapter: Any = None) -> Any:
        self.generate_calls.append(sampling.n)
        return await self._engine.generate(prompt, sampling)

    async def loglikelihoods(self, prefix: str, continuations: Sequence[str]) -> list[float]:
        self.loglik_calls += 1
        return list(await self._engine.loglikelihoods(prefix, continuations))


class NoPeekingRM:
    """A real RM that fails the run if it is ever shown the gold reference."""

    def __init__(self, rm: Any) -> None:
        self.rm, self.name, self.kind = rm, rm.name, rm.kind

    async def score(self, query: Any, responses: Sequence[str]) -> list[float]:
        assert query.reference is None, "an RM was shown the reference"
        assert query.task in ("math", "qa"), query.task  # the answer-format hint
        return list(await self.rm.score(query, responses))


@pytest.mark.slow
def test_small_suite_end_to_end_on_the_real_engine(
    services: Any, loop_thread: Any, tmp_path: Path
) -> None:
    import matplotlib.image

    from laser.server.evaluation.config import EvalConfig
    from laser.server.evaluation.harness import evaluate
    from laser.server.services import build_reward_model
    from tests.conftest import make_settings

    settings = make_settings(tmp_path / "data")
    user = tmp_path / "mine.jsonl"
    user.write_text(
        json.dumps({"prompt": "What is 3 + 4? Answer with a number.", "reference": "7"})
        + "\n"
        + json.dumps(
            {
                "prompt": "Who runs the bakery?",
                "document": "The bakery on Elm Street is run by Marta Quill since 1998.",
                "reference": "Marta Quill",
                "task": "qa",
            }
        )
        + "\n",
        encoding="utf-8",
    )
    config = EvalConfig(
        tasks=["arithmetic", "longqa"],
        items_per_task=3,
        prompts_file=str(user),
        n=4,
        max_tokens=16,
        orderings=3,
        progress=False,
    )
    n_items = 3 + 3 + 2

    def run(out: Path) -> tuple[dict[str, Any], CountingEngine]:
        engine = CountingEngine(services.engine)
        rms = {
            spec.name: NoPeekingRM(
                build_reward_model(spec, engine=engine, encoder=services.encoder)  # type: ignore[arg-type]
            )
            for spec in settings.reward_models
        }
        report = loop_thread.run(
            evaluate(
                config,
                settings,
                engine,  # type: ignore[arg-type]
                services.encoder,
                out,
                tmp_path / "cache",
                "test",
                reward_models=rms,  # type: ignore[arg-type]
            )
        )
        return report, engine

    first, engine1 = run(tmp_path / "out1")
    n_rms = len(settings.reward_models)
    # ONE engine call with n per item, plus one greedy call (n=1) per item.
    assert sorted(engine1.generate_calls) == [1] * n_items + [4] * n_items
    # Likelihood batches: the loglik RM one per item, the judge one per candidate.
    assert engine1.loglik_calls == n_items * (1 + 4)
    assert first["stats"]["rm_score_calls"] == n_rms * n_items

    # Every strategy chose among the same candidates: recompute their picks from items.jsonl,
    # on the held-out items they are scored on.
    rows = [json.loads(line) for line in (tmp_path / "out1" / "items.jsonl").open()]
    assert len(rows) == n_items and all(len(r["candidates"]) == 4 for r in rows)
    assert {r["task"] for r in rows} == {"arithmetic", "longqa", "user", "user:qa"}
    held = [r for r in rows if r["split"] == "heldout"]
    assert held and len(held) < n_items
    s = first["strategies"]
    for rm in first["rms"]:
        by_task: dict[str, list[float]] = {}
        for r in held:
            j = max(range(4), key=lambda j, r=r: (r["candidates"][j]["scores"][rm], -j))
            by_task.setdefault(r["task"], []).append(r["candidates"][j]["quality"])
        for task, vals in by_task.items():
            assert s[f"rm:{rm}"]["per_task"][task] == pytest.approx(np.mean(vals), abs=1e-4)
    for task in {r["task"] for r in held}:
        ts = [r for r in held if r["task"] == task]
        oracle = np.mean([max(c["quality"] for c in r["candidates"]) for r in ts])
        first_sample = np.mean([r["candidates"][0]["quality"] for r in ts])
        assert s["oracle"]["per_task"][task] == pytest.approx(oracle, abs=1e-4)
        assert s["first_sample"]["per_task"][task] == pytest.approx(first_sample, abs=1e-4)
        for name, v in s.items():  # no strategy that picks a candidate beats the oracle
            if name == "greedy":  # its own answer, not one of the n candidates
                continue
            assert v["per_task"][task] <= oracle + 1e-4, (name, task)  # rounded
    assert s["laser"]["rm_calls_per_item"] == 1
    assert s["ensemble_mean"]["rm_calls_per_item"] == n_rms
    assert set(first["laser_heldout_usage"]) == set(first["tasks"])
    assert first["robustness"]["noise"]["laser"]["with"] >= 0
    best = first["chosen_on_stream"]["best_single_rm"]
    assert [m["rm"] for m in first["robustness"]["midway"]] == [best, "noise"]

    # The report files exist and parse.
    out = tmp_path / "out1"
    assert json.loads((out / "report.json").read_text())["n_items"] == n_items
    md = (out / "report.md").read_text()
    assert "LASeR minus each baseline" in md and "![held-out results](accuracy.png)" in md
    for png in ("accuracy.png", "ci.png", "regret.png", "rm_share.png"):
        img = matplotlib.image.imread(out / png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, png

    # A second run reuses the cache: no engine call at all, the same numbers.
    second, engine2 = run(tmp_path / "out2")
    assert engine2.generate_calls == [] and engine2.loglik_calls == 0
    assert second["stats"]["engine_generate_calls"] == 0 and second["stats"]["rm_score_calls"] == 0
    for name, v in first["strategies"].items():
        assert second["strategies"][name]["per_task"] == v["per_task"], name
