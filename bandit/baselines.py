"""The paper's baseline ways of choosing a reward model, behind LinUCB's interface.

`FixedArm` (a single RM), `UniformRandom` (random RM) and `RoundRobin` (the "sequential RMs"
baseline: one RM after another). They ignore the context but accept it, so callers can
swap selectors freely.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from laser.bandit.base import ArmSet, Selection, check_reward, stats_means
from laser.bandit.errors import NoArmsError


class _ContextFree(ArmSet):
    kind = "base"

    def update(self, arm: str, x: npt.ArrayLike | None, reward: float) -> None:
        """Record `reward` for `arm` (the stats feed reports; the choice ignores them)."""
        self._record(self.index(arm), check_reward(reward))

    def add_arm(self, name: str) -> None:
        self._register(name)

    def _selection(self, index: int, propensity: float, idx: list[int]) -> Selection:
        # Uniform draws spread `propensity` over `idx`; deterministic ones put 1 on `index`.
        probs = {
            self._names[i]: (propensity if propensity < 1.0 else float(i == index)) for i in idx
        }
        return Selection(
            arm=self._names[index],
            index=index,
            score=0.0,
            propensity=propensity,
            expectations=stats_means(self, idx),
            widths={self._names[i]: 0.0 for i in idx},
            probabilities=probs,
        )

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, meta: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "meta": {"kind": self.kind, **self._arms_meta(), **self._extra_meta()},
            "arrays": {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_arms_meta(state["meta"])
        self._load_extra(state["meta"])


class FixedArm(_ContextFree):
    """Always the same arm (the "single RM" baseline).

    >>> FixedArm("math", ["math", "chat"]).select(None).arm
    'math'
    """

    kind = "fixed"

    def __init__(self, arm: str, arms: Iterable[str] = ()) -> None:
        super().__init__(arms)
        self.fixed = arm
        self.index(arm)  # an unknown arm is an error now, not at the first select

    def select(
        self, x: npt.ArrayLike | None = None, among: Iterable[str] | None = None
    ) -> Selection:
        """The fixed arm, whatever `among` says (it must be enabled and, given `among`, in it)."""
        idx = self._enabled_indices(among)
        i = self.index(self.fixed)
        if i not in idx:
            raise NoArmsError(f"the fixed arm {self.fixed!r} is disabled or not among {among}")
        return self._selection(i, 1.0, [i])

    def _extra_meta(self) -> dict[str, Any]:
        return {"fixed": self.fixed}

    def _load_extra(self, meta: dict[str, Any]) -> None:
        self.fixed = str(meta["fixed"])
        self.index(self.fixed)


class UniformRandom(_ContextFree):
    """An enabled arm uniformly at random (seeded)."""

    kind = "random"

    def __init__(self, arms: Iterable[str] = (), seed: int = 0) -> None:
        super().__init__(arms)
        self._rng = np.random.default_rng(seed)

    def select(
        self, x: npt.ArrayLike | None = None, among: Iterable[str] | None = None
    ) -> Selection:
        idx = self._enabled_indices(among)
        pick = idx[int(self._rng.integers(len(idx)))]
        return self._selection(pick, 1.0 / len(idx), idx)

    def _extra_meta(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def _load_extra(self, meta: dict[str, Any]) -> None:
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = meta["rng"]


class RoundRobin(_ContextFree):
    """Enabled arms one after another, in index order (the "sequential RMs" baseline)."""

    kind = "round_robin"

    def __init__(self, arms: Iterable[str] = ()) -> None:
        super().__init__(arms)
        self._next = 0

    def select(
        self, x: npt.ArrayLike | None = None, among: Iterable[str] | None = None
    ) -> Selection:
        idx = self._enabled_indices(among)
        n = len(self._names)
        # The first enabled index at or after the cursor, wrapping around.
        pick = min(idx, key=lambda i: (i - self._next) % n)
        self._next = (pick + 1) % n
        return self._selection(pick, 1.0, idx)

    def _extra_meta(self) -> dict[str, Any]:
        return {"next": self._next}

    def _load_extra(self, meta: dict[str, Any]) -> None:
        self._next = int(meta["next"])
