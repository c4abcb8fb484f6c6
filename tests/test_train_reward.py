"""The bandit's reward in training and how training's LinUCB is configured; no model.

A synthetic run stands in for training: the loss falls step after step, and the steps that
use arm B come out `DELTA` below the trend (B is the better RM). The bandit and the reward
are the ones `laser-server train` builds (`make_selector`, `BanditReward`).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import numpy as np
import pytest

from laser.bandit import BaselineAdvantage, LinUCBConfig, from_bytes, to_bytes
from laser.server.config import BanditSettings, FeaturizerSettings, default_reward_models
from laser.server.featurize import Featurizer
from laser.server.training import cli
from laser.server.training.config import TrainConfig, load_train_config
from laser.server.training.loop import Trainer, linucb_config, make_selector
from laser.server.training.reward import BanditReward

FEATURIZER = Featurizer.from_settings(None, FeaturizerSettings())  # the default `kind` context
MATH = FEATURIZER.features_batch(
    ["What is 12 + 7?", "What is 3 * 4?"], [False, False], ["arithmetic"] * 2
).mean(axis=0)
STEPS, DELTA, SIGMA = 60, 0.05, 0.02


def simulate(rule: str, seed: int, first: str, warmup: int = 2, epsilon: float = 0.05) -> str:
    """Arms picked per step (one letter each); step 1 uses `first`, then the bandit picks.
    Defaults: training's (the server's warm-up and epsilon)."""
    cfg = TrainConfig(seed=seed, bandit_reward=rule, bandit={"warmup": warmup, "epsilon": epsilon})
    bandit = make_selector(cfg, ["A", "B"], FEATURIZER.dim, FEATURIZER.regions)
    reward = BanditReward(rule, cfg.baseline_weight)
    noise = np.random.default_rng(100 + seed)
    picks = ""
    for t in range(STEPS):
        arm = first if t == 0 else bandit.select(MATH).arm
        loss = 1.0 + math.exp(-t / 20) + SIGMA * noise.normal() - (DELTA if arm == "B" else 0.0)
        (r,) = reward.rewards([loss], loss)
        assert 0.0 <= r <= 1.0
        bandit.update(arm, MATH, r)
        picks += arm
    return picks


def share_b(picks: str) -> float:
    """B's share of the second half of the run (after the warm start and early noise)."""
    late = picks[len(picks) // 2 :]
    return late.count("B") / len(late)


@pytest.mark.parametrize("first", ["A", "B"])
def test_baseline_reward_prefers_the_arm_that_beats_the_trend(first: str) -> None:
    for seed in range(10):
        assert share_b(simulate("baseline", seed, first)) >= 0.8, (first, seed)


def test_paper_reward_follows_the_order_not_the_quality() -> None:
    # The paper's setting (plain LinUCB: no warm start, no epsilon): the first arm takes
    # every step.
    for first in "AB":
        for seed in range(3):
            picks = simulate("squashed_loss", seed, first, warmup=0, epsilon=0.0)
            assert picks == first * STEPS, (first, seed, picks)
    # With the warm start the squashed loss still locks in: every later step scores about 1
    # whichever arm took it, so each run ends all-or-nothing, and some lock onto A.
    shares = [share_b(simulate("squashed_loss", s, f)) for f in "AB" for s in range(10)]
    assert all(x <= 0.05 or x >= 0.95 for x in shares), shares
    assert any(x <= 0.05 for x in shares), shares


def test_first_step_and_iteration_restart_earn_a_neutral_reward() -> None:
    reward = BanditReward("baseline")
    assert reward.baseline is None and reward.rewards([2.0], 2.0) == [0.5]
    assert reward.baseline == 2.0
    reward.rewards([1.9], 1.9)
    reward.restart()  # a new iteration: the reference re-sync makes the loss jump
    assert reward.baseline is None and reward.rewards([2.5], 2.5) == [0.5]
    # The baseline is the same for every decision of a step, and takes in the step's loss.
    per_query = reward.rewards([2.0, 3.0], 2.2)
    assert per_query[0] > per_query[1]
    assert reward.baseline == pytest.approx(0.7 * 2.5 + 0.3 * 2.2)


def test_advantages_stay_centred_while_the_loss_falls() -> None:
    """On a falling loss the paper's reward saturates near 1; the advantage does not: it
    stays centred on a steady fall, and drifts down (for every arm alike) as the fall slows."""
    noise = np.random.default_rng(0).normal(size=80)
    for shape, lo, hi in (
        (lambda t: 2.0 - 0.01 * t, 0.4, 0.6),  # steady fall
        (lambda t: 1.0 + math.exp(-t / 20), 0.15, 0.5),  # a fall that slows down
    ):
        losses = [shape(t) + 0.02 * noise[t] for t in range(80)]
        paper, ours = BanditReward("squashed_loss"), BanditReward("baseline")
        late_paper = [paper.rewards([v], v)[0] for v in losses][10:]
        late_ours = [ours.rewards([v], v)[0] for v in losses][10:]
        assert float(np.mean(late_paper)) > 0.8
        assert lo < float(np.mean(late_ours)) < hi


def test_warm_start_tries_every_rm_per_kind_of_query() -> None:
    names = [rm.name for rm in default_reward_models()]
    cfg = TrainConfig()
    k, warmup = len(names), cfg.bandit.warmup
    bandit = make_selector(cfg, names, FEATURIZER.dim, FEATURIZER.regions)
    reward = BanditReward(cfg.bandit_reward)
    qa = FEATURIZER.features("Who wrote it?", True, None)
    seen: dict[str, Counter[str]] = {"math": Counter(), "qa": Counter()}
    for t in range(2 * k * warmup):
        kind, x = ("math", MATH) if t % 2 == 0 else ("qa", qa)
        arm = bandit.select(x).arm
        loss = 2.0 - 0.01 * t
        (r,) = reward.rewards([loss], loss)
        bandit.update(arm, x, r)
        seen[kind][arm] += 1
    # Within its first K * warmup decisions, each kind of query tried every RM warmup times.
    for kind in seen:
        assert seen[kind] == dict.fromkeys(names, warmup), kind


def test_training_bandit_is_configured_as_the_servers() -> None:
    cfg = TrainConfig(seed=7)
    server = BanditSettings()
    got = linucb_config(cfg, FEATURIZER.dim, FEATURIZER.regions)
    assert got == LinUCBConfig(
        dim=FEATURIZER.dim,
        alpha=server.alpha,
        ridge=server.ridge,
        epsilon=server.epsilon,
        seed=7,
        warmup=server.warmup,
        regions=FEATURIZER.regions,
    )
    assert got.warmup == 2 and got.regions == 4
    assert make_selector(cfg.model_copy(update={"selector": "ensemble"}), ["a"], 3) is None


def test_reward_state_round_trips_for_resume() -> None:
    losses = [1.0 + math.exp(-t / 8) + 0.03 * math.sin(t) for t in range(30)]
    for rule in ("baseline", "squashed_loss"):
        straight = BanditReward(rule)
        want = [straight.rewards([v], v)[0] for v in losses]
        first = BanditReward(rule)
        got = [first.rewards([v], v)[0] for v in losses[:12]]
        resumed = BanditReward(rule)
        resumed.load_state_dict(from_bytes(to_bytes(first)))  # what the checkpoint holds
        assert resumed.baseline == first.baseline
        got += [resumed.rewards([v], v)[0] for v in losses[12:]]
        assert got == want, rule
    with pytest.raises(ValueError, match="bandit_reward = 'squashed_loss'"):
        BanditReward("baseline").load_state_dict(
            from_bytes(to_bytes(BanditReward("squashed_loss")))
        )
    state = from_bytes(to_bytes(BaselineAdvantage(weight=0.4)))
    assert state["meta"]["kind"] == "baseline_advantage" and state["meta"]["baseline"] is None


def test_config_keys_and_flags() -> None:
    cfg = TrainConfig()
    assert cfg.bandit_reward == "baseline" and cfg.bandit == BanditSettings()
    assert cfg.featurizer == FeaturizerSettings()
    # Earlier configs' flat keys still work.
    old = TrainConfig(alpha=0.2, feature_dim=32, feature_seed=5, bandit={"warmup": 1})
    assert (old.bandit.alpha, old.bandit.warmup) == (0.2, 1)
    assert (old.featurizer.dim, old.featurizer.seed) == (32, 5)
    assert TrainConfig.model_validate_json(old.model_dump_json()) == old
    with pytest.raises(ValueError):
        TrainConfig(bandit_reward="loss")

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["train", "--bandit-reward", "squashed_loss", "--warmup", "3", "--alpha", "0.1"]
    )
    cfg = load_train_config(None, **cli.flag_overrides(args))
    assert cfg.bandit_reward == "squashed_loss"
    assert (cfg.bandit.warmup, cfg.bandit.alpha, cfg.bandit.epsilon) == (3, 0.1, 0.05)


@pytest.mark.parametrize("mode", ["batch", "per_query"])
def test_an_rm_that_cannot_rank_differing_candidates_earns_zero(mode: str) -> None:
    """No pairs: the RM tied every candidate. Where the candidates differed it failed to rank
    them and earns 0 (unrewarded, the warm start would choose it forever); where they were
    all the same text no RM could have ranked them, and nothing is rewarded."""
    trainer = object.__new__(Trainer)  # the bandit update alone: no model
    trainer.cfg = TrainConfig(bandit_mode=mode)
    trainer.selector = make_selector(trainer.cfg, ["grounding", "arith"], FEATURIZER.dim, 4)
    trainer.reward = BanditReward("baseline")
    trainer.contexts = np.stack([MATH, MATH])
    x = MATH if mode == "batch" else None
    arms = ["grounding", "grounding"]

    def pulls() -> int:
        return int(trainer.selector.pulls[trainer.selector.index("grounding")])

    assert trainer._update_bandit([0, 1], arms, x, [], None, None, set()) is None
    assert pulls() == 0
    assert trainer._update_bandit([0, 1], arms, x, [], None, None, {1}) == 0.0
    assert pulls() == 1
    assert trainer.selector.mean_reward("grounding") == 0.0
    assert trainer.reward.baseline is None  # no loss: the shared baseline is untouched
