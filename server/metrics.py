"""Prometheus metrics (`laser_` prefix), one registry per app so tests can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "laser_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.rm_selected = Counter(
            "laser_rm_selected", "Requests scored by each reward model", ["rm", "how"], registry=r
        )
        self.rm_by_kind = Counter(
            "laser_rm_chosen_by_kind",
            "Decisions per reward model that chose and kind of query (math, mc, qa, general)",
            ["rm", "kind"],
            registry=r,
        )
        self.rm_errors = Counter(
            "laser_rm_errors", "Reward-model failures (raised, timed out, NaN)", ["rm"], registry=r
        )
        self.rm_input_errors = Counter(
            "laser_rm_input_errors",
            "Requests a reward model could not score for their input (no circuit effect)",
            ["rm"],
            registry=r,
        )
        self.feedback = Counter("laser_feedback", "Feedback received", ["rm"], registry=r)
        self.feedback_reward = Histogram(
            "laser_feedback_reward",
            "Feedback rewards",
            ["rm"],
            registry=r,
            buckets=(0.0, 0.25, 0.5, 0.75, 1.0),
        )
        self.stage_seconds = Histogram(
            "laser_stage_seconds",
            "Time per pipeline stage",
            ["stage"],
            registry=r,
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
                60,
            ),
        )
        self.candidates = Counter("laser_candidates", "Candidates generated", registry=r)
        self.tokens = Counter("laser_tokens", "Tokens processed", ["kind"], registry=r)
        self.in_flight = Gauge("laser_in_flight", "Requests being processed", registry=r)
        self.engine_errors = Counter("laser_engine_errors", "Engine failures", registry=r)
        # Back-pressure and faults (laser.server.api.admission, the store).
        self.generate_active = Gauge(
            "laser_generate_active", "Generation requests holding a slot", registry=r
        )
        self.queue_depth = Gauge(
            "laser_queue_depth", "Generation requests waiting for a slot", registry=r
        )
        self.rejected = Counter(
            "laser_rejected",
            "Generation requests refused for overload (queue_full: 429, queue_timeout: 503)",
            ["reason"],
            registry=r,
        )
        self.store_errors = Counter(
            "laser_store_errors",
            "SQLite writes that failed (locked, disk full, I/O); nothing was acknowledged",
            ["op"],
            registry=r,
        )
