"""The training experiment's protocol (laser.server.training.experiment), without a model:
the split (no held-out item is ever trained on, chosen on or probed), the batches (one kind
of query per batch, every kind in every iteration), and the report's paired intervals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from laser.server.data import load_prompts
from laser.server.training import experiment as ex
from laser.server.training.loop import Trainer


def test_no_held_out_item_is_trained_on_or_chosen_on(tmp_path: Path) -> None:
    splits = ex.split_items(heldout=200, choice=16, train=48)
    assert len(splits["heldout"]) == 400 and len(splits["choice"]) == 32
    assert len(splits["train"]) == 96
    for name, items in splits.items():
        tasks = [it.task for it in items]
        assert tasks.count("math") == tasks.count("qa") == len(items) // 2, name
    keys = {
        name: {(it.prompt, tuple(it.documents or ())) for it in items}
        for name, items in splits.items()
    }
    assert not keys["heldout"] & keys["train"] and not keys["heldout"] & keys["choice"]
    assert len(keys["heldout"]) == 400  # distinct items, not repeats
    # What the runs read back from disk is the same split.
    paths = ex.write_splits(tmp_path, splits)
    ex.check_split({k: load_prompts(p) for k, p in paths.items()})
    # The probe is built from the training prompts only (`Trainer._start_probe`), and a leak
    # is caught.
    leaked = {**splits, "train": [*splits["train"], splits["heldout"][3]]}
    with pytest.raises(ValueError, match="1 held-out items are in the train split"):
        ex.check_split(leaked)


def test_batches_hold_one_kind_and_every_kind_takes_turns() -> None:
    items = ex.split_items(heldout=0, choice=0, train=10)["train"]
    fake = SimpleNamespace(
        cfg=SimpleNamespace(seed=3, batch_size=4, batch_by_task=True), items=items
    )
    batches = Trainer._batches(fake, 0)  # type: ignore[arg-type]
    assert sorted(i for b in batches for i in b) == list(range(20))  # each prompt once
    kinds = [{items[i].task for i in b} for b in batches]
    assert all(len(k) == 1 for k in kinds)
    assert [k.pop() for k in kinds[:4]] in (["math", "qa"] * 2, ["qa", "math"] * 2)
    assert Trainer._batches(fake, 0) == batches  # the same on resume
    assert Trainer._batches(fake, 1) != batches  # reshuffled each iteration


def _fake_run(out: Path, name: str, before: list[float], after: list[float]) -> None:
    folder = out / name
    folder.mkdir(parents=True)
    summary = {
        "wall_s": 10.0,
        "eval_before": {"per_item": before, "items": len(before)},
        "eval_after": {"per_item": after, "items": len(after)},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    step = {"step": 1, "rm": "arith", "rms": {"arith": 2}, "tasks": ["math", "math"], "loss": 1.0}
    (folder / "steps.jsonl").write_text(
        json.dumps({**step, "generate_s": 2.0, "dpo_s": 3.0}) + "\n"
    )


def test_report_pairs_items_and_intervals_cover_the_difference(tmp_path: Path) -> None:
    items = ex.split_items(heldout=50, choice=0, train=0)["heldout"]
    rng = np.random.default_rng(0)
    before = (rng.random(100) < 0.3).astype(float)
    better = np.where(rng.random(100) < 0.3, 1.0, before)  # ~+20 points, paired
    _fake_run(tmp_path, "ensemble-s0", before.tolist(), before.tolist())
    _fake_run(tmp_path, "laser-s0", before.tolist(), better.tolist())
    report = ex.report(tmp_path, items)
    laser = report["accuracy"]["laser"]
    gain = laser["after_minus_before"]["all"]
    assert gain["mean"] == pytest.approx(100 * float((better - before).mean()), abs=0.01)
    assert 0 < gain["lo"] < gain["mean"] < gain["hi"]
    assert report["accuracy"]["ensemble"]["after_minus_before"]["all"] == {
        "mean": 0.0,
        "lo": 0.0,
        "hi": 0.0,
    }
    assert laser["minus_ensemble"]["all"]["mean"] == gain["mean"]
    assert report["items"] == {"all": 100, "math": 50, "qa": 50}
    assert report["wall"]["laser-s0"]["dpo_s"] == 3.0
    assert report["rm_share"]["laser-s0"] == {"math": {"arith": 1.0}}
