"""The serving log as the estimators need it: one row per decision with feedback.

Read from a server's SQLite file (`<data-dir>/laser.db`, opened read-only) or from a JSONL
export (`write_jsonl`; one decision per line, the same fields). Only decisions whose RM was
drawn from the logged policy (`selection == "bandit"`, or `abstain`: evaluated as the draw
of the RM that abstained) with a reward can be used; the others are counted by reason
(forced, fallback, none: candidates alike, no feedback, foreign context) and reported.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laser.server.config import redact, redact_url
from laser.server.observe import Observed
from laser.server.store.base import DECISION_COLUMNS, Decision, decision_from_row

FloatArray = np.ndarray


class LogError(ValueError):
    """The log cannot be read or holds nothing to evaluate (a clear message for the user)."""


@dataclass(frozen=True)
class LoggedDecision(Decision):
    """A logged decision with its feedback (None: no feedback was given)."""

    reward: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "prompt": self.prompt,
            "task": self.task,
            "has_document": self.has_document,
            "arm": self.arm,
            "propensity": self.propensity,
            "selection": self.selection,
            "context": [float(v) for v in self.context],
            "probabilities": self.probabilities,
            "scores": self.scores,
            "chosen": self.chosen,
            "model": self.model,
            "drawn_arm": self.drawn_arm,
            "observed": None if self.observed is None else json.loads(self.observed.to_json()),
            "reward": self.reward,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LoggedDecision:
        return cls(
            id=str(d["id"]),
            created=float(d.get("created", 0.0)),
            prompt=str(d.get("prompt", "")),
            task=d.get("task"),
            has_document=bool(d.get("has_document", False)),
            arm=str(d["arm"]),
            propensity=float(d["propensity"]),
            selection=str(d.get("selection", "bandit")),
            context=np.asarray(d["context"], dtype=np.float64),
            probabilities=d.get("probabilities"),
            scores=list(d.get("scores", [])),
            chosen=int(d.get("chosen", 0)),
            model=str(d.get("model", "")),
            drawn_arm=d.get("drawn_arm"),
            observed=Observed.from_json(json.dumps(d["observed"])) if d.get("observed") else None,
            reward=None if d.get("reward") is None else float(d["reward"]),
        )


@dataclass
class LogData:
    """The evaluable rows as arrays, in log order, and what was left out and why.

    `arms` are the RMs the log knows; `actions[i]` indexes the RM that scored row i,
    `propensity[i]` is the logged policy's probability of it, `logged_probs[i, k]` its
    probability of RM k (NaN where the log did not record the distribution).
    """

    rows: list[LoggedDecision]
    arms: list[str]
    contexts: FloatArray
    actions: np.ndarray
    propensity: FloatArray
    rewards: FloatArray
    logged_probs: FloatArray
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.contexts.shape[1]) if self.n else 0


def _as_drawn(d: LoggedDecision) -> LoggedDecision:
    """An `abstain` row (the drawn RM scored all candidates alike, the next one chose) is a
    draw of the drawn RM: the answer served is what drawing it leads to under the serving
    rule, so it is evaluated as that draw with its own propensity. Side observations (other
    RMs' agreement) are not draws and never enter the estimators."""
    if d.selection != "abstain" or d.drawn_arm is None or not d.probabilities:
        return d
    p = d.probabilities.get(d.drawn_arm)
    if p is None:
        return d
    return dataclasses.replace(d, arm=d.drawn_arm, propensity=p, selection="bandit")


def build(decisions: Iterable[LoggedDecision], arms: Sequence[str] | None = None) -> LogData:
    """Keep the rows an estimator may use; count the rest by reason."""
    decisions = [_as_drawn(d) for d in decisions]
    excluded: Counter[str] = Counter()
    keep: list[LoggedDecision] = []
    dims = Counter(d.context.shape[0] for d in decisions if d.selection == "bandit")
    dim = dims.most_common(1)[0][0] if dims else 0
    for d in decisions:
        if d.selection != "bandit":
            excluded[d.selection] += 1  # forced / fallback not drawn; none: no RM mattered
        elif d.reward is None:
            excluded["no_feedback"] += 1
        elif d.context.shape[0] != dim:
            excluded["other_context"] += 1  # logged under another featurizer setting
        elif not 0.0 < d.propensity <= 1.0:
            excluded["bad_propensity"] += 1
        else:
            keep.append(d)
    known = list(arms) if arms is not None else []
    for d in keep:
        for name in [d.arm, *(d.probabilities or {})]:
            if name not in known:
                known.append(name)
    index = {a: k for k, a in enumerate(known)}
    n, k = len(keep), len(known)
    probs = np.full((n, k), np.nan)
    for i, d in enumerate(keep):
        if d.probabilities is not None:
            probs[i] = 0.0
            for name, p in d.probabilities.items():
                probs[i, index[name]] = p
    return LogData(
        rows=keep,
        arms=known,
        contexts=np.stack([d.context for d in keep]) if keep else np.zeros((0, dim)),
        actions=np.array([index[d.arm] for d in keep], dtype=np.int64),
        propensity=np.array([d.propensity for d in keep]),
        rewards=np.array([d.reward for d in keep], dtype=np.float64),
        logged_probs=probs,
        excluded=dict(excluded),
    )


def _read_db(path: Path) -> list[LoggedDecision]:
    if not path.is_file():
        raise LogError(f"{path}: no such file (give a data directory or its laser.db)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise LogError(f"{path} is not a laser-server database: {exc}") from None
    try:
        if not {"decisions", "feedback"} <= tables:
            raise LogError(
                f"{path} is not a laser-server database (no decisions and feedback tables)"
            )
        columns = {r[1] for r in conn.execute("PRAGMA table_info(decisions)")}
        cols = DECISION_COLUMNS
        if "probabilities" not in columns:  # written before the distribution was logged
            cols = cols.replace("drawn_arm, probabilities", "NULL, NULL")
        for added in ("observed", "candidates"):  # columns newer than the file
            if added not in columns:
                cols = cols.replace(f", {added}", ", NULL")
        rewards = dict(conn.execute("SELECT decision_id, reward FROM feedback").fetchall())
        out = []
        for row in conn.execute(f"SELECT {cols} FROM decisions ORDER BY created, rowid"):
            d = decision_from_row(row)
            out.append(LoggedDecision(**vars(d), reward=rewards.get(d.id)))
        return out
    finally:
        conn.close()


def read_jsonl(path: Path) -> list[LoggedDecision]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(LoggedDecision.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                raise LogError(f"{path}:{i}: not a logged decision ({exc})") from None
    return out


def write_jsonl(decisions: Iterable[LoggedDecision], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for d in decisions:
            f.write(json.dumps(d.to_json()) + "\n")


def _read_pg(url: str) -> list[LoggedDecision]:
    import psycopg

    from laser.server.store.postgres import decision_from_pg_row

    try:
        with psycopg.connect(url) as conn:
            rewards: dict[str, float] = dict(
                conn.execute("SELECT decision_id, reward FROM feedback").fetchall()
            )
            rows = conn.execute(f"SELECT {DECISION_COLUMNS} FROM decisions ORDER BY created")
            decisions = [decision_from_pg_row(r) for r in rows]
    except psycopg.errors.UndefinedTable:
        raise LogError(
            f"{redact_url(url)} is not a laser-server database (no decisions table)"
        ) from None
    except psycopg.Error as exc:  # messages and the URL may carry the password
        raise LogError(f"cannot read {redact_url(url)}: {redact(str(exc))}") from None
    return [LoggedDecision(**vars(d), reward=rewards.get(d.id)) for d in decisions]


def read_decisions(source: str | Path) -> list[LoggedDecision]:
    """Every logged decision of a data directory, a `laser.db`, a PostgreSQL store's URL, or
    a JSONL export."""
    if str(source).startswith(("postgresql://", "postgres://")):
        return _read_pg(str(source))
    path = Path(source)
    if path.is_dir():
        path = path / "laser.db"
    if path.suffix in (".jsonl", ".gz"):
        if not path.is_file():
            raise LogError(f"{path}: no such file")
        return read_jsonl(path)
    return _read_db(path)


def read_log(source: str | Path) -> LogData:
    """The evaluable rows of a log (see `read_decisions`); `LogError` when there are none."""
    data = build(read_decisions(source))
    if data.n == 0:
        left = ", ".join(f"{v} {k}" for k, v in sorted(data.excluded.items())) or "none at all"
        raise LogError(
            f"{redact_url(str(source))}: no decision drawn by the bandit has feedback yet "
            f"(decisions left out: {left}); serve with feedback first"
        )
    return data
