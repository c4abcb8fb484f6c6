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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from laser.server.config import BreakerSettings
from laser.server.metrics import Metrics
from laser.server.observe import top_pick
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
        # Measured milliseconds per candidate (moving average), what side observations are
        # budgeted by; an RM not yet measured counts at its declared `cost_ms`.
        self.cost_ms: dict[str, float] = {}
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

    def cost(self, name: str) -> float:
        """Milliseconds per candidate: measured, else the RM's declared `cost_ms` (unknown:
        infinite, so an RM is never scored for side observations before it is measured)."""
        if name in self.cost_ms:
            return self.cost_ms[name]
        rm = self.models[name]
        members = getattr(rm, "members", None)
        if members is not None:  # an ensemble costs what its members cost
            return sum(self.cost(m) for m in members if m in self.models)
        return float(getattr(rm, "cost_ms", math.inf))

    def cheap(self, names: Sequence[str], budget_ms: float) -> list[str]:
        """Those of `names` that cost at most `budget_ms` per candidate and whose circuit is
        closed: the RMs scored on every request for side observations."""
        if budget_ms <= 0:
            return []

        def ok(a: str) -> bool:
            if a not in self.models or self.breakers[a].state != "closed":
                return False
            members = getattr(self.models[a], "members", None)
            if members is not None:  # free when its members are scored anyway
                return all(ok(m) for m in members)
            return self.cost(a) <= budget_ms

        return [a for a in names if ok(a)]

    async def _call(
        self, name: str, query: Query, texts: list[str], known: dict[str, list[float]] | None = None
    ) -> list[float]:
        rm = self.models[name]
        combine = getattr(rm, "combine", None)
        t = time.perf_counter()
        if combine is not None and known is not None:
            # An ensemble: its members' scores of this request are reused, missing ones made.
            parts = {m: known.get(m) for m in rm.members}  # type: ignore[attr-defined]
            for m, got in parts.items():
                if got is None:
                    parts[m] = await self._call(m, query, texts)
            scores = combine([p for p in parts.values() if p is not None])
        else:
            scores = await asyncio.wait_for(rm.score(query, texts), self.timeout_s)
        if len(scores) != len(texts) or not all(math.isfinite(s) for s in scores):
            raise ValueError(f"RM {name} sent {len(scores)} scores with NaN/inf or wrong length")
        if texts and combine is None:
            ms = 1000 * (time.perf_counter() - t) / len(texts)
            prev = self.cost_ms.get(name)
            self.cost_ms[name] = ms if prev is None else 0.9 * prev + 0.1 * ms
        return [float(s) for s in scores]

    async def score_each(
        self, names: Sequence[str], query: Query, texts: list[str], known: dict[str, list[float]]
    ) -> None:
        """Score with each of `names` not in `known` yet, adding what succeeds to `known`
        (side observations: one RM failing costs nothing but its own scores). Ensembles go
        last, from their members' scores."""
        todo = [n for n in names if n not in known]
        plain = [n for n in todo if not hasattr(self.models[n], "combine")]
        results = await asyncio.gather(
            *(self._guarded(n, query, texts, known) for n in plain), return_exceptions=False
        )
        for n, got in zip(plain, results, strict=True):
            if got is not None:
                known[n] = got
        for n in todo:
            if n not in plain:
                got = await self._guarded(n, query, texts, known)
                if got is not None:
                    known[n] = got

    async def _guarded(
        self, name: str, query: Query, texts: list[str], known: dict[str, list[float]]
    ) -> list[float] | None:
        """One RM's scores with the breaker and error accounting of `score`; None on failure."""
        breaker = self.breakers[name]
        breaker.begin()
        try:
            scores = await self._call(name, query, texts, known)
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
            return scores
        return None

    async def score(
        self,
        order: Sequence[str],
        query: Query,
        texts: list[str],
        known: dict[str, list[float]] | None = None,
        skip_abstaining: bool = False,
    ) -> tuple[str, list[float]]:
        """The first RM of `order` that scores `texts`, and its scores. Open circuits are
        skipped, unless every RM of the order is open: then all are tried anyway.

        `known`: scores already made for this request (side observations), reused and added
        to. `skip_abstaining`: an RM that scores every candidate alike is passed over for the
        next (`observe.choose`); when every RM abstains the first that scored is returned."""
        known = {} if known is None else known
        skip = {a for a in order if not self.breakers[a].available() and a not in known}
        if len(skip) == len(order):
            skip = set()
        first: str | None = None
        for name in order:
            if name in skip:
                continue
            if name not in known:
                got = await self._guarded(name, query, texts, known)
                if got is None:
                    continue
                known[name] = got
            if not skip_abstaining or top_pick(known[name]) is not None:
                return name, known[name]
            first = first or name
        if first is not None:
            return first, known[first]
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
