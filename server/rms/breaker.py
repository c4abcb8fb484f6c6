"""Circuit breakers for reward models: a repeatedly faulty RM is taken out of selection.

closed --(`failures` faults in a row)--> open --(`cooldown_s` later)--> half_open
half_open --(its trial call succeeds)--> closed;  half_open --(it fails)--> open again

While open, the bandit does not choose the RM and the fallback order skips it, so a dead
remote RM (or one that hangs until `rm_timeout_s`) costs requests nothing. Half-open lets
ONE request try it again; others keep skipping it until that trial ends. A fault is an
exception, a timeout, or NaN/inf/wrong-length scores.

>>> breaker = CircuitBreaker(failures=2, cooldown_s=30)
>>> breaker.failure(); breaker.failure(); breaker.state
'open'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class CircuitBreaker:
    """One RM's breaker. Runs on the event loop only, so it needs no lock."""

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self.consecutive = 0  # faults since the last success
        self.trips = 0  # times it opened
        self._open_since: float | None = None
        self._trial = False  # a half-open trial call is running

    @property
    def state(self) -> str:
        if self._open_since is None:
            return "closed"
        if self.clock() - self._open_since < self.cooldown_s:
            return "open"
        return "half_open"

    def available(self) -> bool:
        """May a request call this RM now? (False while open, or half-open with a trial out.)"""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._trial)

    def begin(self) -> None:
        """A call starts; in half-open it is the trial."""
        if self.state == "half_open":
            self._trial = True

    def success(self) -> None:
        self.consecutive, self._open_since, self._trial = 0, None, False

    def failure(self) -> None:
        self.consecutive += 1
        reopen = self._open_since is not None  # a failed half-open trial
        if reopen or self.consecutive >= self.failures:
            if self.state != "open":
                self.trips += 1
            self._open_since = self.clock()
        self._trial = False

    def abandon(self) -> None:
        """The call was cancelled (client gone): neither outcome; let another request try."""
        self._trial = False

    def retry_in(self) -> float | None:
        """Seconds until an open breaker goes half-open; None unless open."""
        if self.state != "open" or self._open_since is None:
            return None
        return max(0.0, self.cooldown_s - (self.clock() - self._open_since))

    def status(self) -> dict[str, Any]:
        """What `/health` and `/admin/reward-models` show for this RM."""
        retry = self.retry_in()
        return {
            "circuit": self.state,
            "consecutive_errors": self.consecutive,
            "circuit_trips": self.trips,
            "retry_in_s": None if retry is None else round(retry, 3),
        }


class BreakerCollector:
    """Prometheus view of the breakers, read at scrape time (open -> half-open is lazy):
    `laser_rm_circuit_state{rm}` (0 closed, 1 half-open, 2 open) and
    `laser_rm_circuit_trips_total{rm}`."""

    def __init__(self, breakers: Mapping[str, CircuitBreaker]) -> None:
        self.breakers = breakers

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "laser_rm_circuit_state",
            "Reward-model circuit breaker: 0 closed, 1 half-open, 2 open (out of selection)",
            labels=["rm"],
        )
        trips = CounterMetricFamily(
            "laser_rm_circuit_trips", "Times a reward model's circuit opened", labels=["rm"]
        )
        for name, breaker in list(self.breakers.items()):
            state.add_metric([name], STATE_VALUES[breaker.state])
            trips.add_metric([name], breaker.trips)
        yield state
        yield trips

    def describe(self) -> list[Metric]:
        return []  # no up-front description: the arms change while serving
