"""What one feedback teaches the bandit: the learning rule serving, training and the
evaluation share.

LASeR as published updates only the RM that chose. A reranking server sees more: when the
cheap RMs have scored the same candidates (`bandit.observe_ms_per_candidate`), a feedback on
the returned answer is also exactly the reward every other RM would have earned whose top
pick is that same answer (the same text, or the same extracted final answer), so those arms
are updated too ("side observations"). An RM that gives every candidate the same score has
made no choice: it abstains. Serving then asks the next RM (`choose`), and the abstaining
RM is credited `abstain_reward` instead of the first sample's luck, so an RM that cannot
judge a kind of query cannot win that kind.

>>> obs = observe("arith", {"arith": [0, 1, 1], "grounding": [2, 2, 2], "loglik": [0, 5, 1]},
...               ["x", "19", "19"], chosen=1, kind="number")
>>> obs.agree, obs.abstain
(['loglik'], ['grounding'])
>>> credits("arith", 1.0, obs, abstain_reward=0.0)
[('arith', 1.0), ('loglik', 1.0), ('grounding', 0.0)]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from laser.server import answers

ANSWER_KINDS = {"math": "number", "mc": "choice", "qa": "span"}
"""How final answers are compared per kind of query (`featurize.query_kind`); open-ended
(`general`) answers only when the texts are equal."""


def top_pick(scores: Sequence[float | None]) -> int | None:
    """The candidate an RM chooses (the first of its highest scores), or None when it
    scores every candidate alike (it abstains) or there is only one candidate."""
    values = [float("-inf") if s is None else float(s) for s in scores]
    if len(values) < 2 or max(values) == min(values):
        return None
    return values.index(max(values))


def answer_key(text: str, kind: str | None) -> str:
    """What two answers must share to count as the same: the final answer `answers.extract`
    reads for `kind` (`number`, `choice`, `span`), else (none found, or an open-ended query
    with no kind) the whole text."""
    got = answers.extract(text, kind) if kind is not None else None
    return f"answer:{got}" if got is not None else f"text:{text}"


def same_answer(a: str, b: str, kind: str | None) -> bool:
    """The same text, or the same final answer (`answer_key`)."""
    return a == b or answer_key(a, kind) == answer_key(b, kind)


@dataclass(frozen=True)
class Observed:
    """What a decision's feedback reveals besides the deciding RM's reward."""

    agree: list[str] = field(default_factory=list)
    """RMs (other than the one that decided) whose top pick is the returned answer."""
    abstain: list[str] = field(default_factory=list)
    """RMs that scored every candidate alike."""
    scores: dict[str, list[float]] = field(default_factory=dict)
    """Every RM's scores computed for the decision (the deciding RM's included)."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """How long each stage took until the decision was made (prepare ... score)."""

    def to_json(self) -> str:
        d = {"agree": self.agree, "abstain": self.abstain, "scores": self.scores}
        return json.dumps({**d, "timings_ms": self.timings_ms})

    @classmethod
    def from_json(cls, text: str | None) -> Observed | None:
        if not text:
            return None
        d: dict[str, Any] = json.loads(text)
        agree, abstain = list(d.get("agree", [])), list(d.get("abstain", []))
        return cls(agree, abstain, d.get("scores", {}), d.get("timings_ms", {}))


def observe(
    used: str,
    scores: Mapping[str, Sequence[float]],
    texts: Sequence[str],
    chosen: int,
    kind: str | None,
) -> Observed:
    """Which RMs agree with the returned candidate `chosen` and which abstain, from every
    RM's `scores` of `texts`. `used` is the RM that decided (never listed)."""
    agree, abstain = [], []
    for name, s in scores.items():
        if name == used:
            continue
        pick = top_pick(s)
        if pick is None:
            abstain.append(name)
        elif same_answer(texts[pick], texts[chosen], kind):
            agree.append(name)
    return Observed(agree, abstain, {k: [float(v) for v in s] for k, s in scores.items()})


def credits(
    used: str, reward: float, observed: Observed | None, abstain_reward: float
) -> list[tuple[str, float]]:
    """(arm, reward) updates for one feedback: the deciding RM, every RM that agrees with it,
    and `abstain_reward` for every RM that abstained."""
    out = [(used, reward)]
    if observed is None:
        return out
    out += [(a, reward) for a in observed.agree if a != used]
    out += [(a, abstain_reward) for a in observed.abstain if a != used]
    return out


def choose(order: Sequence[str], scores: Mapping[str, Sequence[float]]) -> str | None:
    """The first RM of `order` that has scores and a preference; None when all abstain."""
    for name in order:
        if name in scores and top_pick(scores[name]) is not None:
            return name
    return None
