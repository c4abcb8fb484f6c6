"""RM-selection strategies over cached candidates and scores: pure numpy, no model.

Every strategy picks one of the SAME n candidates per item, from a `Table` holding, for N
items: each candidate's quality (the graded correctness; LASeR's feedback), every RM's
scores, and the bandit's context per item.

| strategy | picks | RM calls per item |
|---|---|---|
| `laser` | the serving rule (`learn_laser`): bandit draws the RM; feedback = pick's quality | 1+ |
| `rm:<name>` | always that RM | 1 |
| `ensemble_mean` | argmax of the mean of per-item min-max normalised scores of all RMs | K |
| `ensemble_vote` | the candidate most RMs rank first (ties: `ensemble_mean`) | K |
| `first_sample` | candidate 0 (no reranking) | 0 |
| `greedy` | the greedy decode (a separate engine call) | 0 |
| `oracle` | any correct candidate (max quality): the ceiling of best-of-n | - |
| `oracle_rm_query` | per item, the RM whose pick is best in hindsight | 1 |

Ties among a single RM's scores go to the lowest index, as in serving (`np.argmax`).

>>> t = Table(tasks=["a", "a"], quality=np.array([[0.0, 1.0], [1.0, 0.0]]),
...           scores={"x": np.array([[0.0, 1.0], [0.0, 1.0]])}, contexts=np.ones((2, 1)))
>>> run_fixed(t, "x").quality.tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from laser.bandit import LinUCB, LinUCBConfig
from laser.server.config import BanditSettings
from laser.server.priors import apply_priors

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass
class Table:
    """Graded candidates and RM scores for N items x n candidates."""

    tasks: list[str]
    quality: FloatArray
    scores: dict[str, FloatArray]
    contexts: FloatArray
    exact: FloatArray | None = None
    greedy_quality: FloatArray | None = None
    greedy_exact: FloatArray | None = None
    score_seconds: dict[str, FloatArray] = field(default_factory=dict)
    """Measured seconds each RM took to score each item (for cost reports)."""
    regions: int = 0
    """How many leading features of `contexts` are the one-hot region (kind of query)."""
    context_variants: dict[str, tuple[FloatArray, int]] = field(default_factory=dict)
    """Other contexts for ablations: name -> (contexts, regions)."""
    keys: list[list[str]] | None = None
    """Per item and candidate, the final answer as serving compares answers (`observe.
    same_answer`: the extracted answer, else the text); None: candidates agree only with
    themselves."""
    kinds: list[str] | None = None
    """Per item, the kind of query (`featurize.KINDS`), for priors."""
    ensemble_members: dict[str, list[str]] = field(default_factory=dict)
    """RMs whose scores are an ensemble arm's (`rms/ensemble.py`) over these members."""

    def __post_init__(self) -> None:
        n_items = len(self.tasks)
        if self.quality.ndim != 2 or self.quality.shape[0] != n_items:
            raise ValueError(f"quality must be (N={n_items}, n), got {self.quality.shape}")
        for name, s in self.scores.items():
            if s.shape != self.quality.shape:
                raise ValueError(f"scores of {name!r} are {s.shape}, not {self.quality.shape}")
        if self.contexts.shape[0] != n_items:
            raise ValueError("one context row per item is needed")
        if self.exact is None:
            self.exact = self.quality

    @property
    def rms(self) -> list[str]:
        return list(self.scores)

    def with_scores(self, extra: dict[str, FloatArray], seconds: dict[str, FloatArray]) -> Table:
        """A copy with more RMs (e.g. a noise RM)."""
        return Table(
            tasks=self.tasks,
            quality=self.quality,
            scores={**self.scores, **extra},
            contexts=self.contexts,
            exact=self.exact,
            greedy_quality=self.greedy_quality,
            greedy_exact=self.greedy_exact,
            score_seconds={**self.score_seconds, **seconds},
            regions=self.regions,
            context_variants=self.context_variants,
            keys=self.keys,
            kinds=self.kinds,
            ensemble_members=self.ensemble_members,
        )

    def with_ensemble_arm(self, name: str, members: Sequence[str]) -> Table:
        """A copy with an ensemble arm over `members`: the score ensemble serving's
        `ensemble` RM computes, costing what its members cost."""
        scores = ensemble_mean_scores(self, members)
        seconds = sum((self.score_seconds[m] for m in members if m in self.score_seconds), 0.0)
        out = self.with_scores({name: scores}, {name: np.asarray(seconds, dtype=np.float64)})
        out.ensemble_members = {**self.ensemble_members, name: list(members)}
        return out


@dataclass
class Run:
    """One strategy over one ordering. Per-item arrays are indexed by item, not stream step."""

    strategy: str
    picks: IntArray
    quality: FloatArray
    exact: FloatArray
    order: IntArray
    arms: list[str | None]
    rm_calls: int
    rm_seconds: float
    overhead_seconds: float = 0.0


def _result(
    name: str,
    t: Table,
    picks: IntArray,
    order: IntArray | None = None,
    arms: Sequence[str | None] | None = None,
    overhead: float = 0.0,
    every_rm: bool = False,
) -> Run:
    """`arms[i]`: the one RM item i was scored with; `every_rm`: scored with all (ensembles)."""
    idx = np.arange(len(t.tasks))
    arms = list(arms) if arms is not None else [None] * len(idx)
    if every_rm:
        base = [r for r in t.rms if r not in t.ensemble_members]
        calls = len(idx) * len(base)
        secs = sum(float(np.sum(t.score_seconds.get(r, 0.0))) for r in base)
    else:
        calls = sum(1 for a in arms if a is not None)
        secs = sum(
            float(t.score_seconds[a][i])
            for i, a in enumerate(arms)
            if a is not None and a in t.score_seconds
        )
    assert t.exact is not None
    return Run(
        strategy=name,
        picks=picks.astype(np.int64),
        quality=t.quality[idx, picks],
        exact=t.exact[idx, picks],
        order=idx if order is None else order,
        arms=arms,
        rm_calls=calls,
        rm_seconds=secs,
        overhead_seconds=overhead,
    )


def normalised(scores: FloatArray) -> FloatArray:
    """Per-row min-max to [0, 1]; a row of equal scores becomes 0.5 (it ranks nothing).

    >>> normalised(np.array([[1.0, 3.0, 2.0], [4.0, 4.0, 4.0]])).tolist()
    [[0.0, 1.0, 0.5], [0.5, 0.5, 0.5]]
    """
    lo = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    return np.asarray(np.where(span > 0, (scores - lo) / safe, 0.5), dtype=np.float64)


def run_fixed(t: Table, rm: str, order: IntArray | None = None) -> Run:
    picks = np.argmax(t.scores[rm], axis=1)
    return _result(f"rm:{rm}", t, picks, order, [rm] * len(t.tasks))


def ensemble_mean_scores(t: Table, rms: Sequence[str] | None = None) -> FloatArray:
    """The score ensemble over `rms` (default: every RM but the ensemble arms)."""
    rms = list(rms or [r for r in t.rms if r not in t.ensemble_members])
    return np.asarray(np.mean([normalised(t.scores[r]) for r in rms], axis=0), dtype=np.float64)


def run_ensemble_mean(t: Table, order: IntArray | None = None) -> Run:
    picks = np.argmax(ensemble_mean_scores(t), axis=1)
    return _result("ensemble_mean", t, picks, order, every_rm=True)


def votes(t: Table, rms: Sequence[str] | None = None) -> FloatArray:
    """Per item and candidate, how many RMs rank it first. An RM that scores every candidate
    of an item alike has no preference there and abstains (it does not vote for the first)."""
    out = np.zeros_like(t.quality)
    idx = np.arange(len(t.tasks))
    for r in rms or [r for r in t.rms if r not in t.ensemble_members]:
        s = t.scores[r]
        decided = s.max(axis=1) > s.min(axis=1)
        out[idx[decided], np.argmax(s, axis=1)[decided]] += 1
    return out


def run_ensemble_vote(t: Table, order: IntArray | None = None) -> Run:
    """Each RM votes for its top candidate; most votes wins, ties by the mean ensemble."""
    # Votes dominate; the mean ensemble (in [0, 1]) only breaks ties between them.
    picks = np.argmax(votes(t) + 0.5 * ensemble_mean_scores(t), axis=1)
    return _result("ensemble_vote", t, picks, order, every_rm=True)


def run_first(t: Table, order: IntArray | None = None) -> Run:
    return _result("first_sample", t, np.zeros(len(t.tasks), dtype=np.int64), order)


def run_oracle(t: Table, order: IntArray | None = None) -> Run:
    return _result("oracle", t, np.argmax(t.quality, axis=1), order)


def run_greedy(t: Table, order: IntArray | None = None) -> Run | None:
    if t.greedy_quality is None:
        return None
    idx = np.arange(len(t.tasks))
    exact = t.greedy_exact if t.greedy_exact is not None else t.greedy_quality
    return Run(
        strategy="greedy",
        picks=np.full(len(idx), -1, dtype=np.int64),
        quality=t.greedy_quality.astype(np.float64),
        exact=exact.astype(np.float64),
        order=idx if order is None else order,
        arms=[None] * len(idx),
        rm_calls=0,
        rm_seconds=0.0,
    )


def run_oracle_rm_query(t: Table, order: IntArray | None = None) -> Run:
    """Per item, the RM whose pick is best (hindsight): the ceiling of RM selection."""
    fixed = {r: run_fixed(t, r) for r in t.rms}
    arms: list[str | None] = []
    picks = np.zeros(len(t.tasks), dtype=np.int64)
    for i in range(len(t.tasks)):
        best = max(t.rms, key=lambda r: fixed[r].quality[i])  # first RM on ties
        arms.append(best)
        picks[i] = fixed[best].picks[i]
    return _result("oracle_rm_query", t, picks, order, arms)


@dataclass(frozen=True)
class LaserSettings:
    """The LinUCB that plays LASeR in the evaluation. Its fields are what `report.json`
    records under `laser` and what the settings ablation varies; the bandit itself is built
    the way serving builds it (`linucb`)."""

    alpha: float = 0.5
    ridge: float = 1.0
    epsilon: float = 0.05
    warmup: int = 0
    """Rewarded tries per RM and context region before UCB takes over (LinUCBConfig).

    0 here, 2 in serving (`BanditSettings.warmup`): a bare `LaserSettings()` is plain LinUCB
    without a warm start, what the strategy tests are written against. `analyse` takes the
    server's warm-up (`from_bandit`) and the ablation sets its own, so neither uses this
    default."""
    context: str = "features"
    """`features` (the table's serving context), `bias` (a constant 1: a context-free UCB,
    the ablation) or the name of one of the table's `context_variants`."""
    policy: str = "ucb"
    """`ucb` or `thompson` (`LinUCBConfig.policy`)."""
    observe_ms: float = 0.0
    """Side observations: RMs costing at most this many ms per candidate (measured in the
    table) are scored on every item; 0 = only the RMs the rule asks (LASeR as published)."""
    abstain: bool = False
    """An RM that scores every candidate alike passes to the next RM and is credited
    `abstain_reward`; False: it picks candidate 0 and earns its quality (as published)."""
    abstain_reward: float = 0.0
    priors: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    """`priors.learn_priors` output to start from (None: a cold start)."""
    prior_strength: float = 8.0

    def rule(self) -> str:
        """A short name of the learning rule, for reports."""
        parts = [self.policy]
        if self.observe_ms > 0:
            parts.append("side")
        if self.abstain:
            parts.append("abstain")
        if self.priors is not None:
            parts.append("priors")
        return "+".join(parts)

    @classmethod
    def from_bandit(cls, bandit: BanditSettings) -> LaserSettings:
        """The server's bandit settings; the evaluation keeps its own seeds (per ordering)
        and dtype (`linucb`)."""
        return cls(
            alpha=bandit.alpha,
            ridge=bandit.ridge,
            epsilon=bandit.epsilon,
            warmup=bandit.warmup,
            policy=bandit.policy,
            observe_ms=bandit.observe_ms_per_candidate,
            abstain=True,
            abstain_reward=bandit.abstain_reward,
            prior_strength=bandit.prior_strength,
        )

    def linucb(self, dim: int, regions: int, seed: int) -> LinUCBConfig:
        """The LinUCBConfig through `BanditSettings.linucb`, the one path serving, training and
        the OPE build theirs by. The dtype stays float64 whatever the server's: the
        evaluation's numbers do not depend on a speed setting."""
        bandit = BanditSettings(
            alpha=self.alpha,
            ridge=self.ridge,
            epsilon=self.epsilon,
            warmup=self.warmup,
            policy=self.policy,
            dtype="float64",
        )
        return bandit.linucb(dim, regions, seed)


def laser_context(t: Table, context: str) -> tuple[FloatArray, int]:
    """(contexts, regions) of a LaserSettings.context name."""
    if context == "features":
        return t.contexts, t.regions
    if context == "bias":
        return np.ones((len(t.tasks), 1)), 0
    try:
        return t.context_variants[context]
    except KeyError:
        known = ["features", "bias", *t.context_variants]
        raise ValueError(f"unknown context {context!r}; known: {known}") from None


def observed_rms(t: Table, rms: Sequence[str], budget_ms: float, n: int) -> list[str]:
    """The RMs scored on every item for side observations: those whose measured time per
    candidate is within `budget_ms` (serving's `RMPool.cheap`, on the table's timings); an
    ensemble arm when all its members are."""
    if budget_ms <= 0:
        return []
    out = []
    for rm in rms:
        secs = t.score_seconds.get(rm)
        if secs is not None and len(secs) and 1000 * float(np.mean(secs)) / n <= budget_ms:
            out.append(rm)
    out = [r for r in out if r not in t.ensemble_members]
    out += [e for e, m in t.ensemble_members.items() if e in rms and all(x in out for x in m)]
    return out


def _top(row: FloatArray) -> int | None:
    return None if row.max() == row.min() else int(np.argmax(row))


def learn_laser(
    t: Table,
    order: IntArray,
    seed: int,
    settings: LaserSettings = LaserSettings(),
    rms: Sequence[str] | None = None,
    add_midway: tuple[str, int] | None = None,
    name: str = "laser",
) -> tuple[LinUCB, Run]:
    """The serving rule over the items in `order` (all items or a subset, e.g. the stream
    split): the bandit draws an RM; with `abstain`, an RM scoring every candidate alike
    passes to the next by the bandit's order; the chooser's top candidate is returned and
    its quality fed back, to the chooser and (with `observe_ms`) to every observed RM whose
    top candidate is the same answer, and `abstain_reward` to every observed RM that
    abstained (`observe.credits`). Returns the bandit as it ends and the run (meaningful on
    the items of `order` only).

    `add_midway=(rm, step)`: `rm` is absent at first and added as a new arm (from the prior)
    before stream step `step`, as an RM added to a running server would be.
    """
    arms = list(rms or t.rms)
    late = None
    if add_midway is not None:
        late, at = add_midway
        arms = [a for a in arms if a != late]
    ctx, regions = laser_context(t, settings.context)
    bandit = LinUCB(settings.linucb(ctx.shape[1], regions, seed), arms)
    if settings.priors is not None:
        apply_priors(bandit, settings.priors, settings.prior_strength)
    n = t.quality.shape[1]
    observed = observed_rms(t, list(rms or t.rms), settings.observe_ms, n)
    chosen: list[str | None] = [None] * len(t.tasks)
    picks = np.zeros(len(t.tasks), dtype=np.int64)
    spent = 0.0
    alpha = bandit.config.alpha
    for step, i in enumerate(order):
        if late is not None and step == at:
            bandit.add_arm(late)
            if settings.priors is not None:
                apply_priors(bandit, settings.priors, settings.prior_strength)
        start = time.perf_counter()
        sel = bandit.select(ctx[i])
        ucb = {a: sel.expectations[a] + alpha * sel.widths[a] for a in sel.expectations}
        ranked = [sel.arm, *sorted((a for a in ucb if a != sel.arm), key=lambda a: -ucb[a])]
        arm = sel.arm
        if settings.abstain:
            arm = next((a for a in ranked if _top(t.scores[a][i]) is not None), sel.arm)
        pick = int(np.argmax(t.scores[arm][i]))
        reward = float(t.quality[i, pick])
        if settings.abstain and _top(t.scores[arm][i]) is None:
            pass  # no RM had a preference: nothing to learn (serving's `none`)
        else:
            seen = {a: t.scores[a][i] for a in [*observed, *ranked[: ranked.index(arm) + 1]]}
            bandit.update(arm, ctx[i], reward)
            for a, row in seen.items():
                if a == arm or a not in bandit.arms:
                    continue
                top = _top(row)
                if top is None:
                    if settings.abstain:
                        bandit.update(a, ctx[i], settings.abstain_reward)
                elif a in observed and _same(t, i, top, pick):
                    bandit.update(a, ctx[i], reward)
        spent += time.perf_counter() - start
        chosen[i], picks[i] = arm, pick
    return bandit, _result(name, t, picks, order, chosen, overhead=spent)


def _same(t: Table, i: int, a: int, b: int) -> bool:
    return a == b or (t.keys is not None and t.keys[i][a] == t.keys[i][b])


def run_laser(
    t: Table,
    order: IntArray,
    seed: int,
    settings: LaserSettings = LaserSettings(),
    rms: Sequence[str] | None = None,
    add_midway: tuple[str, int] | None = None,
    name: str = "laser",
) -> Run:
    """`learn_laser`'s run alone."""
    return learn_laser(t, order, seed, settings, rms, add_midway, name)[1]


def frozen_arms(
    bandit: LinUCB, ctx: FloatArray, items: IntArray, t: Table | None = None
) -> list[str]:
    """The RM a frozen bandit deploys per item: the highest expected reward (theta.x), no
    exploration bonus, no epsilon, no updates; ties go to the first arm. With `t` (the
    abstention rule), an RM that scores the item's candidates all alike passes to the next by
    expected reward, as serving does."""
    arms = bandit.enabled_arms
    theta = np.array([bandit.theta(a) for a in arms])
    means = ctx[items] @ theta.T
    if t is None:
        return [arms[int(k)] for k in np.argmax(means, axis=1)]
    out = []
    for row, i in zip(means, items, strict=True):
        ranked = [arms[int(k)] for k in np.argsort(-row, kind="stable")]
        out.append(next((a for a in ranked if _top(t.scores[a][i]) is not None), ranked[0]))
    return out
