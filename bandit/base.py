"""What every arm selector shares: named arms, enable/disable, stats, the `Selection` result."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from laser.bandit.errors import InvalidInputError, NoArmsError, UnknownArmError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Selection:
    """One choice of arm.

    `expectations` and `widths` hold every enabled arm's estimate and confidence width
    (LinUCB's `theta.x` and `sqrt(x' A^-1 x)`; baselines report their running mean reward
    and 0). `propensity` is the probability with which the selector would pick `arm` for
    this context: 1.0 for a deterministic choice, less where ties or exploration randomise
    it, so logged decisions can be evaluated off-policy later. `probabilities` is the whole
    distribution the choice was drawn from: each eligible arm's chance (summing to 1), so a
    log can also say how likely an arm chosen some other way was under this policy.
    """

    arm: str
    index: int
    score: float
    propensity: float
    expectations: dict[str, float] = field(default_factory=dict)
    widths: dict[str, float] = field(default_factory=dict)
    explored: bool = False
    probabilities: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Selector(Protocol):
    """What LinUCB and every baseline offer, so that a caller (the server, the trainer, the
    evaluation) can hold any of them: choose an arm for a context, learn from a reward,
    save and restore. Context-free selectors accept a context and ignore it.

    >>> from laser.bandit import FixedArm, LinUCB, LinUCBConfig
    >>> selectors = [LinUCB(LinUCBConfig(dim=2), ["a"]), FixedArm("a", ["a"])]
    >>> all(isinstance(s, Selector) for s in selectors)
    True
    """

    kind: str

    @property
    def arms(self) -> list[str]: ...

    def select(self, x: npt.ArrayLike, among: Iterable[str] | None = None) -> Selection:
        """An enabled arm for context `x`; `among` restricts the choice to those arms."""
        ...

    def update(self, arm: str, x: npt.ArrayLike, reward: float) -> None: ...

    def add_arm(self, name: str) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_reward(reward: float) -> float:
    """Return `reward` as a float, or raise `InvalidInputError` if it is not finite."""
    try:
        r = float(reward)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"reward must be a number, got {reward!r}") from exc
    if not math.isfinite(r):
        raise InvalidInputError(f"reward must be finite, got {r}")
    return r


class ArmSet:
    """Named arms with enabled flags and per-arm statistics.

    Arms keep their index for life; disabling one only removes it from selection.

    >>> arms = ArmSet(["math", "chat"])
    >>> arms.index("chat")
    1
    """

    def __init__(self, arms: Iterable[str] = ()) -> None:
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._enabled: list[bool] = []
        self.pulls: list[int] = []
        self.reward_sum: list[float] = []
        for name in arms:
            self._register(name)

    def _register(self, name: str) -> int:
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"arm names must be non-empty strings, got {name!r}")
        if name in self._index:
            raise InvalidInputError(f"arm {name!r} exists already")
        self._index[name] = len(self._names)
        self._names.append(name)
        self._enabled.append(True)
        self.pulls.append(0)
        self.reward_sum.append(0.0)
        return self._index[name]

    @property
    def arms(self) -> list[str]:
        """Every arm name, enabled or not, in index order."""
        return list(self._names)

    @property
    def enabled_arms(self) -> list[str]:
        return [n for n, on in zip(self._names, self._enabled, strict=True) if on]

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise UnknownArmError(name, self._names) from None

    def is_enabled(self, name: str) -> bool:
        return self._enabled[self.index(name)]

    def disable_arm(self, name: str) -> None:
        self._enabled[self.index(name)] = False

    def enable_arm(self, name: str) -> None:
        self._enabled[self.index(name)] = True

    def _enabled_indices(self, among: Iterable[str] | None = None) -> list[int]:
        """The enabled arms' indices (only those named in `among`, when given)."""
        idx = [i for i, on in enumerate(self._enabled) if on]  # K is small: cheaper than a cache
        if not idx:
            raise NoArmsError("no arm to select from: add one or enable a disabled one")
        if among is not None:
            allowed = {self.index(a) for a in among}
            idx = [i for i in idx if i in allowed]
            if not idx:
                raise NoArmsError("none of the requested arms is enabled")
        return idx

    def _record(self, index: int, reward: float) -> None:
        self.pulls[index] += 1
        self.reward_sum[index] += reward

    def mean_reward(self, name: str) -> float | None:
        i = self.index(name)
        return self.reward_sum[i] / self.pulls[i] if self.pulls[i] else None

    def _arms_meta(self) -> dict[str, Any]:
        return {
            "arms": list(self._names),
            "enabled": list(self._enabled),
            "pulls": list(self.pulls),
            "reward_sum": list(self.reward_sum),
        }

    def _load_arms_meta(self, meta: dict[str, Any]) -> None:
        names = list(meta["arms"])
        self._names = []
        self._index = {}
        self._enabled = []
        self.pulls = []
        self.reward_sum = []
        for name in names:
            self._register(name)
        self._enabled = [bool(v) for v in meta["enabled"]]
        self.pulls = [int(v) for v in meta["pulls"]]
        self.reward_sum = [float(v) for v in meta["reward_sum"]]
        if not len(self._enabled) == len(self.pulls) == len(self.reward_sum) == len(names):
            raise ValueError("arm lists of different lengths")


def stats_means(arms: ArmSet, indices: list[int]) -> dict[str, float]:
    """Running mean reward per arm (0 for an arm never rewarded), for baselines' reports."""
    names = arms.arms
    return {
        names[i]: (arms.reward_sum[i] / arms.pulls[i] if arms.pulls[i] else 0.0) for i in indices
    }
