"""Candidate RM-selection policies, each giving its distribution over RMs for every logged row.

- `rm:<name>`: always that RM (the "single RM" alternative).
- `uniform`: an RM uniformly at random.
- `route:<name>`: a rule by the kind of query (math / mc / qa / general), e.g. arithmetic to
  the verifier, document QA to the grounding checker, the rest to the judge.
- `linucb(...)`: LinUCB as the server runs it, with other settings (alpha, ridge, epsilon,
  warm-up, context), replayed over the log: before row i it has learnt from the logged
  (context, RM, reward) of rows 0..i-1, and its distribution for row i is its policy then.
  It learns from the RMs the log chose, not from its own choices (what any replay from a
  log can do), so it is the policy that setting WOULD serve after seeing the same feedback.
- `logged`: the logged policy itself (its recorded distribution); its estimate should match
  the observed mean reward, a check of the estimators on the log at hand.

A policy file (TOML) holds one policy: `name`, then `rm = "arith"`, or `[route]` with a
kind -> RM table (`default` for the rest), or `[bandit]` (and optionally `[featurizer]`)
sections as in the server config.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from laser.bandit import LinUCB
from laser.server.config import BanditSettings, FeaturizerSettings
from laser.server.featurize import query_kind
from laser.server.kinds import KINDS
from laser.server.ope.logdata import LogData, LogError

FloatArray = np.ndarray


@dataclass
class Policy:
    """A named way to turn the log into a distribution over its RMs per row (n, K)."""

    name: str
    probabilities: Callable[[LogData], FloatArray]
    kind: str = "static"


def _eligible(log: LogData, i: int) -> list[str]:
    """The RMs the logged policy could choose at row i (all known ones when not recorded)."""
    row = log.logged_probs[i]
    if np.isnan(row).any():
        return list(log.arms)
    return [a for a, p in zip(log.arms, row, strict=True) if p > 0] or list(log.arms)


def fixed(rm: str) -> Policy:
    def probs(log: LogData) -> FloatArray:
        if rm not in log.arms:
            raise LogError(f"the log never used RM {rm!r}; it knows {', '.join(log.arms)}")
        out = np.zeros((log.n, len(log.arms)))
        out[:, log.arms.index(rm)] = 1.0
        return out

    return Policy(f"rm:{rm}", probs)


def uniform() -> Policy:
    def probs(log: LogData) -> FloatArray:
        return np.full((log.n, len(log.arms)), 1.0 / len(log.arms))

    return Policy("uniform", probs)


def logged() -> Policy:
    def probs(log: LogData) -> FloatArray:
        if np.isnan(log.logged_probs).any():
            raise LogError("this log does not record the logged policy's distribution")
        out: FloatArray = log.logged_probs
        return out

    return Policy("logged", probs, kind="logged")


def kind_of(log: LogData, i: int) -> str:
    d = log.rows[i]
    return query_kind(d.prompt, d.has_document, d.task)


def route(name: str, table: dict[str, str]) -> Policy:
    unknown = set(table) - {*KINDS, "default"}
    if unknown:
        raise ValueError(f"route keys must be kinds {KINDS} or 'default', got {sorted(unknown)}")

    def probs(log: LogData) -> FloatArray:
        out = np.zeros((log.n, len(log.arms)))
        for i in range(log.n):
            rm = table.get(kind_of(log, i), table.get("default"))
            if rm is None or rm not in log.arms:
                raise LogError(f"route {name}: no known RM for kind {kind_of(log, i)!r}")
            out[i, log.arms.index(rm)] = 1.0
        return out

    return Policy(f"route:{name}", probs)


def _contexts(log: LogData, featurizer: FeaturizerSettings | None) -> tuple[FloatArray, int]:
    """The contexts a replayed LinUCB sees: the logged ones, or recomputed from the logged
    questions under other featurizer settings (the MiniLM encoder loaded only if needed)."""
    from laser.server.featurize import Featurizer

    if featurizer is None:
        # The logged context; its region block is the kind one-hot when it has that size.
        regions = len(KINDS) if log.dim == len(KINDS) + 3 else 0
        return log.contexts, regions
    encoder = None
    if featurizer.context == "projection" or featurizer.embed_dims:
        from laser.server import assets
        from laser.server.featurize import SentenceEncoder

        encoder = SentenceEncoder(featurizer.model or assets.minilm_path())
    f = Featurizer.from_settings(encoder, featurizer)
    x = f.features_batch(
        [d.prompt for d in log.rows], [d.has_document for d in log.rows], [d.task for d in log.rows]
    )
    return x, f.regions


def linucb(
    name: str, bandit: BanditSettings, featurizer: FeaturizerSettings | None = None
) -> Policy:
    def probs(log: LogData) -> FloatArray:
        x, regions = _contexts(log, featurizer)
        learner = LinUCB(bandit.linucb(x.shape[1], regions), log.arms)
        out = np.zeros((log.n, len(log.arms)))
        for i in range(log.n):
            sel = learner.select(x[i], among=_eligible(log, i))
            for arm, p in sel.probabilities.items():
                out[i, log.arms.index(arm)] = p
            learner.update(log.arms[log.actions[i]], x[i], float(log.rewards[i]))
        return out

    return Policy(name, probs, kind="learner")


def describe(bandit: BanditSettings, base: BanditSettings) -> str:
    changed = [
        f"{k}={v}"
        for k, v in bandit.model_dump().items()
        if k not in ("seed", "snapshot_every") and v != getattr(base, k)
    ]
    return f"linucb({', '.join(changed) or 'as served'})"


def default_policies(
    log: LogData,
    bandit: BanditSettings | None = None,
    alphas: Sequence[float] = (0.1, 2.0),
) -> list[Policy]:
    """The logged policy, every RM alone, uniform, and the served LinUCB (`bandit`, the
    server's settings) replayed as served, greedy (epsilon 0) and with other alphas."""
    base = bandit or BanditSettings()
    out = [logged()] if not np.isnan(log.logged_probs).any() else []
    out += [fixed(a) for a in log.arms] + [uniform()]
    variants = [base, base.model_copy(update={"epsilon": 0.0})]
    variants += [base.model_copy(update={"alpha": a}) for a in alphas if a != base.alpha]
    out += [linucb(describe(v, base), v) for v in variants]
    return out


def load_policy_file(path: str | Path, base: BanditSettings | None = None) -> Policy:
    """One policy from a TOML file (see the module docstring)."""
    p = Path(path)
    try:
        data: dict[str, Any] = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"policy file {p}: {exc}") from None
    name = str(data.get("name", p.stem))
    given = [k for k in ("rm", "route", "bandit") if k in data]
    if len(given) != 1:
        raise ValueError(f"policy file {p}: give exactly one of rm, [route] or [bandit]")
    if "rm" in data:
        return fixed(str(data["rm"]))
    if "route" in data:
        return route(name, {str(k): str(v) for k, v in data["route"].items()})
    start = (base or BanditSettings()).model_dump()
    bandit = BanditSettings.model_validate({**start, **data["bandit"]})
    featurizer = (
        FeaturizerSettings.model_validate(data["featurizer"]) if "featurizer" in data else None
    )
    return linucb(f"linucb:{name}", bandit, featurizer)
