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
    # The probe reward's settings, and a boolean flag.
    args = parser.parse_args(
        ["train", "--bandit-reward", "probe", "--batch-by-task", "true", "--probe-prompts", "4"]
    )
    cfg = load_train_config(None, **cli.flag_overrides(args))
    assert (cfg.bandit_reward, cfg.batch_by_task, cfg.probe_prompts) == ("probe", True, 4)
    assert cfg.likelihoods == "engine"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--batch-by-task", "maybe"])
    with pytest.raises(ValueError, match="probe"):
        TrainConfig(bandit_reward="probe", handover="lora")
    # A fixed RM per kind of query: every RM named must be one of the run's.
    per_kind = TrainConfig(selector="fixed", fixed_rm_by_task={"math": "arith", "qa": "grounding"})
    assert per_kind.label == "fixed:math=arith,qa=grounding"
    with pytest.raises(ValueError, match="not one of"):
        TrainConfig(selector="fixed", fixed_rm_by_task={"math": "nope"})
    with pytest.raises(ValueError, match="only used with selector"):
        TrainConfig(selector="laser", fixed_rm_by_task={"math": "arith"})


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


# -- the label-free `probe` reward (laser.server.training.probe) ------------------------------
def probe_simulation(rule: str, seed: int, steps: int = 80) -> dict[str, str]:
    """A synthetic training run where the right RM per kind of query is known.

    The policy is log-linear per kind, log pi(c) = theta_k . phi(c) + const, over candidates
    with features (right, long, noise), the first two 0/1: training on one prompt's pair
    moves theta_k, so it generalises to every prompt of the kind. RM `maths` ranks by
    correctness on `math` and at random on `qa`; `docs` the other way round; `wordy` always
    prefers the longer candidate (consistent, but not about meaning); `agree` (like the
    self-agreement RM) is right more often than chance on both kinds; `loglik` prefers what
    the policy already prefers (theta . phi), as the likelihood RM does. The probe's pairs are
    the consensus of the four others (their mean rank), made once at the start from fresh
    candidates, as `build_probe` does: here, as with the built-in RMs, the consensus leans
    towards meaning. Each step trains on one kind's batch with the RM the bandit picks (one
    DPO step on the RM's top-vs-bottom pairs) and rewards it by `rule`. Returns the RMs
    picked per kind."""
    from laser.server.training.probe import ProbeReward

    rng = np.random.default_rng(seed)
    kinds = ["math", "qa"]
    contexts = {
        k: FEATURIZER.features_batch([f"a {k} question"], [k == "qa"], [k])[0] for k in kinds
    }
    theta = {k: np.zeros(3) for k in kinds}
    right = {"math": "maths", "qa": "docs"}
    arms = ["maths", "docs", "wordy", "agree", "loglik"]

    def candidates() -> np.ndarray:
        c = rng.normal(size=(6, 3))
        c[:, 0] = rng.random(6) < 0.3  # which candidates are right
        c[:, 1] = rng.random(6) < 0.5  # which are long
        return c

    def rm_scores(rm: str, kind: str, c: np.ndarray) -> np.ndarray:
        noise = rng.normal(size=6)
        if rm == "loglik":  # what the policy already prefers: its pairs are the easy ones
            return c @ theta[kind] + 0.1 * noise
        if rm == "wordy":
            return c[:, 1] + 0.1 * noise
        if rm == "agree":
            return c[:, 0] + noise
        return c[:, 0] + 0.1 * noise if right[kind] == rm else noise

    def top_bottom(scores: np.ndarray, c: np.ndarray) -> np.ndarray:
        return c[int(np.argmax(scores))] - c[int(np.argmin(scores))]

    probe = {}
    for k in kinds:
        diffs = []
        for _ in range(8):
            c = candidates()
            ranks = [np.argsort(np.argsort(rm_scores(rm, k, c))) for rm in arms if rm != "loglik"]
            diffs.append(top_bottom(np.mean(ranks, axis=0), c))
        probe[k] = np.array(diffs)

    def margins() -> dict[str, float]:
        return {k: float((probe[k] @ theta[k]).mean()) for k in kinds}

    cfg = TrainConfig(seed=seed, bandit={"warmup": 1})
    bandit = make_selector(cfg, arms, FEATURIZER.dim, FEATURIZER.regions)
    probe_reward, loss_reward = ProbeReward(), BanditReward("baseline", cfg.baseline_weight)
    probe_reward.rewards([], margins())
    picks: dict[str, str] = {k: "" for k in kinds}
    for t in range(steps):
        kind = kinds[t % 2]
        arm = bandit.select(contexts[kind]).arm
        losses, grad = [], np.zeros(3)
        for _ in range(4):  # the batch: four prompts of this kind, one pair each
            c = candidates()
            d = top_bottom(rm_scores(arm, kind, c), c)
            z = float(d @ theta[kind])
            losses.append(math.log1p(math.exp(-z)))
            grad += d / (1.0 + math.exp(z))
        theta[kind] += 0.1 * grad / 4
        if rule == "probe":
            r = probe_reward.rewards([kind], margins())[kind]
        else:
            (r,) = loss_reward.rewards([float(np.mean(losses))], float(np.mean(losses)))
        bandit.update(arm, contexts[kind], r)
        picks[kind] += arm[0]
    return picks


def test_probe_reward_favours_what_teaches_over_what_is_easy() -> None:
    """The issue's failure, reproduced and fixed: under the loss-based reward the bandit
    learns to use `loglik`, whose pairs are the ones the policy already prefers (lowest
    loss, least to learn); under `probe` it rarely does, and gives each kind its right
    specialist well above chance (1 in 5 arms) and far more often than the loss reward.
    12 seeded runs of 80 steps; shares are of the second half of each kind's steps."""
    right, easy = {}, {}
    for rule in ("probe", "baseline"):
        r, e = [], []
        for seed in range(12):
            picks = probe_simulation(rule, seed)
            late = {k: p[len(p) // 2 :] for k, p in picks.items()}
            n = sum(map(len, late.values()))
            r.append((late["math"].count("m") + late["qa"].count("d")) / n)
            e.append((late["math"] + late["qa"]).count("l") / n)
        right[rule], easy[rule] = float(np.mean(r)), float(np.mean(e))
    assert easy["baseline"] > 0.5 and easy["probe"] < 0.25, easy
    assert right["probe"] > 1.5 * 0.2 and right["probe"] > 2 * right["baseline"], right


def test_probe_reward_is_the_change_against_the_kinds_trend_and_resumes() -> None:
    from laser.server.training.probe import ProbeReward

    reward = ProbeReward(weight=0.5)
    assert reward.rewards(["math"], {"math": 0.0, "qa": 0.0}) == {}  # starting margins
    assert reward.rewards(["math"], {"math": 0.5, "qa": 0.0}) == {"math": 0.5}  # no trend yet
    assert reward.baseline == {"math": 0.5}
    # A change below the kind's trend earns the least, one above it the most: the falling
    # changes of a drifting run are not every RM's failure.
    assert reward.rewards(["math"], {"math": 0.9, "qa": 0.0}) == {"math": 0.5}  # +0.4 vs 0.5
    assert reward.rewards(["math"], {"math": 1.2, "qa": 0.0})["math"] == 0.0  # +0.3 vs 0.45
    assert reward.rewards(["math"], {"math": 1.9, "qa": 0.0})["math"] == 1.0  # +0.7 vs 0.375
    got = reward.rewards(["qa", "math"], {"math": 1.9, "qa": 1.0})
    assert got["qa"] == 0.5  # the first change of another kind
    again = ProbeReward()
    again.load_state_dict(from_bytes(to_bytes(reward)))
    assert (again.last, again.baseline, again.weight) == (reward.last, reward.baseline, 0.5)
    assert again.rewards(["qa"], {"qa": 1.2, "math": 0.4}) == reward.rewards(
        ["qa"], {"qa": 1.2, "math": 0.4}
    )
