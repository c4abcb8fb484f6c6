"""Training rewards for the bandit, in [0, 1].

- `PercentileSquash`: LASeR's squash, raw rewards mapped to [0, 1] by percentiles of past
  rewards (the paper squashes the step's negative loss).
- `BaselineAdvantage`: the step's loss against a running baseline shared by all arms, then
  squashed the same way: fair between arms while the loss falls.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from laser.bandit.base import check_reward


class PercentileSquash:
    """0 below the `low` quantile of past rewards, 1 above the `high` one, linear between.

    The history is the last `window` rewards (bounded memory; a sliding window also follows
    a training loss that drifts). The reward being squashed joins the history first, as in
    the paper's code. When the two quantiles coincide (e.g. the first reward) the result is
    0.5 for a reward equal to them, else 0 or 1.

    >>> squash = PercentileSquash()
    >>> [round(squash(r), 2) for r in (1.0, 2.0, 3.0)]
    [0.5, 1.0, 1.0]
    """

    def __init__(self, window: int = 10_000, low: float = 0.2, high: float = 0.8) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not (0.0 <= low < high <= 1.0):
            raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
        self.window, self.low, self.high = window, low, high
        self._history: deque[float] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._history)

    def __call__(self, raw: float) -> float:
        r = check_reward(raw)
        self._history.append(r)
        lo, hi = np.quantile(np.fromiter(self._history, float), [self.low, self.high])
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            return 0.5 if lo <= r <= hi else float(r > hi)
        return float(np.clip((r - lo) / (hi - lo), 0.0, 1.0))

    def state_dict(self) -> dict[str, Any]:
        return {
            "meta": {
                "kind": "percentile_squash",
                "window": self.window,
                "low": self.low,
                "high": self.high,
            },
            "arrays": {"history": np.fromiter(self._history, float)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = state["meta"]
        self.window, self.low, self.high = int(meta["window"]), meta["low"], meta["high"]
        history = (float(v) for v in state["arrays"]["history"])
        self._history = deque(history, maxlen=self.window)


class BaselineAdvantage:
    """A reward that compares arms fairly while a training loss falls.

    Each step's loss is compared with a baseline SHARED by all arms: an exponential moving
    average of the previous steps' losses, whichever arm they used, taken before this step's
    value joins it. The advantage `baseline - loss` (positive when the step did better than
    the recent trend) is squashed to [0, 1] by the 20th/80th percentiles of past advantages
    (`PercentileSquash`). A falling loss shifts every arm's advantage by the same lag, so
    the percentiles stay centred and an arm is rewarded only for beating the trend, not for
    coming later. With no baseline yet (the first step, or after `restart()`) the reward is
    0.5 and nothing joins the advantage history.

    `rewards(losses, step_loss)` takes one loss per decision of the step (one in the paper's
    batch mode; one per prompt, its own pairs' loss, in per-query mode) and the step's loss
    over all its pairs, which is what the baseline then takes in.

    >>> reward = BaselineAdvantage(weight=0.5)
    >>> reward.rewards([2.0]), reward.rewards([1.5]), reward.rewards([1.4])
    ([0.5], [0.5], [0.0])
    >>> reward.baseline
    1.575
    """

    kind = "baseline_advantage"

    def __init__(
        self, weight: float = 0.3, window: int = 10_000, low: float = 0.2, high: float = 0.8
    ) -> None:
        if not (0.0 < weight <= 1.0):
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        self.weight = weight
        self.squash = PercentileSquash(window, low, high)
        self.baseline: float | None = None

    def rewards(self, losses: Sequence[float], step_loss: float | None = None) -> list[float]:
        """Squashed advantages of this step's `losses`; then the baseline takes in
        `step_loss` (default: the mean of `losses`)."""
        values = [check_reward(v) for v in losses]
        if step_loss is None:
            if not values:
                return []
            step_loss = float(np.mean(values))
        step_loss = check_reward(step_loss)
        base = self.baseline
        out = [0.5] * len(values) if base is None else [self.squash(base - v) for v in values]
        w = self.weight
        self.baseline = step_loss if base is None else (1.0 - w) * base + w * step_loss
        return out

    def restart(self) -> None:
        """Forget the baseline (not the advantage history): the loss jumps, e.g. when the
        DPO reference is re-synced to the policy at an iteration's start."""
        self.baseline = None

    def state_dict(self) -> dict[str, Any]:
        inner = self.squash.state_dict()
        return {
            "meta": {
                "kind": self.kind,
                "weight": self.weight,
                "baseline": self.baseline,
                "window": self.squash.window,
                "low": self.squash.low,
                "high": self.squash.high,
            },
            "arrays": inner["arrays"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = state["meta"]
        self.weight = float(meta["weight"])
        base = meta["baseline"]
        self.baseline = None if base is None else float(base)
        self.squash.load_state_dict(
            {
                "meta": {"window": meta["window"], "low": meta["low"], "high": meta["high"]},
                "arrays": state["arrays"],
            }
        )
