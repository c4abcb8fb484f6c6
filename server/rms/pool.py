"""The reward models being served: each with its circuit breaker and statistics, and scoring
that falls back to the next RM of an order when one fails.

An RM that raises, times out or returns NaN never fails a request: the next RM in the order
scores it; an RM that keeps failing is taken out by its breaker (`breaker.py`). An RM that
cannot score one request's input (`RMInputError`) falls back the same way but leaves its
circuit alone: the input is at fault, and crafted requests must not open a circuit for all.

>>> # pool = RMPool({"arith": rm}, BreakerSettings(), Metrics(), timeout_s=60)
>>> # used, scores = await pool.score(["arith", "judge"], query, texts)
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from laser.server.config import BreakerSettings
from laser.server.metrics import Metrics
from laser.server.rms.base import Query, RewardModel, RMInputError
from laser.server.rms.breaker import BreakerCollector, CircuitBreaker

log = logging.getLogger("laser.server")


@dataclass
class RMStats:
    selected: int = 0
    errors: int = 0
    input_errors: int = 0
    feedback: int = 0
    reward_sum: float = 0.0
    last_error: str | None = None


class AllRMsFailedError(RuntimeError):
    """No RM of the order could score the candidates."""


class RMPool:
    def __init__(
        self,
        models: Mapping[str, RewardModel],
        breaker: BreakerSettings,
        metrics: Metrics,
        timeout_s: float,
    ) -> None:
        self.models = dict(models)
        self._breaker_settings = breaker
        self.metrics, self.timeout_s = metrics, timeout_s
        self.stats = {name: RMStats() for name in self.models}
        self.breakers = {name: self._new_breaker() for name in self.models}
        metrics.registry.register(BreakerCollector(self.breakers))

    def _new_breaker(self) -> CircuitBreaker:
        return CircuitBreaker(self._breaker_settings.failures, self._breaker_settings.cooldown_s)

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def add(self, name: str, rm: RewardModel) -> None:
        self.models[name] = rm
        self.stats[name] = RMStats()
        self.breakers[name] = self._new_breaker()

    def healthy(self, names: Sequence[str]) -> list[str]:
        """Those of `names` whose circuit lets a call through."""
        return [a for a in names if a not in self.breakers or self.breakers[a].available()]

    async def _call(self, name: str, query: Query, texts: list[str]) -> list[float]:
        scores = await asyncio.wait_for(self.models[name].score(query, texts), self.timeout_s)
        if len(scores) != len(texts) or not all(math.isfinite(s) for s in scores):
            raise ValueError(f"RM {name} sent {len(scores)} scores with NaN/inf or wrong length")
        return [float(s) for s in scores]

    async def score(
        self, order: Sequence[str], query: Query, texts: list[str]
    ) -> tuple[str, list[float]]:
        """The first RM of `order` that scores `texts`, and its scores. Open circuits are
        skipped, unless every RM of the order is open: then all are tried anyway."""
        skip = {a for a in order if not self.breakers[a].available()}
        if len(skip) == len(order):
            skip = set()
        for name in order:
            if name in skip:
                continue
            breaker = self.breakers[name]
            breaker.begin()
            try:
                scores = await self._call(name, query, texts)
            except asyncio.CancelledError:
                breaker.abandon()
                raise
            except RMInputError as exc:  # this request's fault, not the RM's
                breaker.abandon()
                self.stats[name].input_errors += 1
                self.metrics.rm_input_errors.labels(name).inc()
                log.info("reward model %s cannot score this input: %s", name, exc)
            except Exception as exc:  # an RM fault never fails the request
                breaker.failure()
                self.stats[name].errors += 1
                self.stats[name].last_error = f"{type(exc).__name__}: {exc}"[:300]
                self.metrics.rm_errors.labels(name).inc()
                log.warning(
                    "reward model %s failed (circuit %s): %s",
                    name,
                    breaker.state,
                    self.stats[name].last_error,
                )
            else:
                breaker.success()
                return name, scores
        raise AllRMsFailedError("every reward model failed")

    async def aclose(self) -> None:
        """Close what RMs opened (a remote RM's HTTP client); errors are logged, not raised."""
        for name, rm in self.models.items():
            close = getattr(rm, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception as exc:
                log.warning("closing reward model %s: %s", name, exc)

    def faults(self) -> list[str]:
        out = []
        for name, breaker in self.breakers.items():
            if breaker.state != "closed":
                out.append(f"reward model {name}: circuit {breaker.state}")
            elif breaker.consecutive:
                out.append(f"reward model {name}: {self.stats[name].last_error}")
        return out

    def status(self, name: str) -> dict[str, Any]:
        """Selections, errors, mean feedback and circuit of one RM (for /health, admin)."""
        if name not in self.stats:
            return {
                "selected": 0,
                "errors": 0,
                "input_errors": 0,
                "mean_feedback": None,
                "last_error": None,
            }
        s = self.stats[name]
        return {
            "selected": s.selected,
            "errors": s.errors,
            "input_errors": s.input_errors,
            "mean_feedback": s.reward_sum / s.feedback if s.feedback else None,
            "last_error": s.last_error,
            **self.breakers[name].status(),
        }
