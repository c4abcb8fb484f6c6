"""LASeR's reward squash: raw rewards mapped to [0, 1] by percentiles of past rewards."""

from __future__ import annotations

from collections import deque
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
