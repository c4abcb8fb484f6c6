"""Priors: each RM's expected reward per kind of query, learnt offline on labelled items and
loaded by `serve` and `train`, so a deployment starts informed instead of cold.

A user with a few hundred labelled items (the JSONL `eval --prompts` reads) runs

    laser-server priors --prompts my.jsonl --out priors.json

which samples n candidates per item, lets every RM pick one, grades the picks against the
references and writes, per RM and kind of query, the mean reward of its picks (an RM that
scores every candidate alike earns `abstain_reward`, as online) and how many items that
mean rests on. `[bandit] priors = "priors.json"` folds each entry into the bandit as a
pseudo-observation of strength `min(items, prior_strength)` at that kind's one-hot context
(`LinUCB.add_prior`): saved with the bandit's state, restored and shared like any update,
and it stands in for the warm start where it is at least `warmup` strong.

File format (JSON): `{"format": "laser.priors", "version": 1, "kinds": [...],
"priors": {rm: {kind: {"mean": m, "items": n}}}, "source": {...}}`.

>>> p = learn_priors(["math", "math", "qa"], np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]),
...                  {"a": np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])})
>>> p["a"]["math"], p["a"]["qa"]
({'mean': 0.5, 'items': 2}, {'mean': 0.5, 'items': 1})
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laser.bandit import LinUCB
from laser.server.kinds import KINDS

log = logging.getLogger("laser.server")

FORMAT, VERSION = "laser.priors", 1
Priors = dict[str, dict[str, dict[str, Any]]]
"""rm -> kind -> {"mean": float, "items": int}"""


class PriorsError(ValueError):
    """A priors file that cannot be read or does not fit."""


def learn_priors(
    kinds: Sequence[str],
    quality: np.ndarray,
    scores: Mapping[str, np.ndarray],
    abstain_reward: float = 0.0,
) -> Priors:
    """Per RM and kind, the mean graded quality of the RM's pick over the items of that
    kind (`quality`, `scores[rm]`: items x candidates); an item on which the RM scores every
    candidate alike counts `abstain_reward`."""
    kinds_arr = np.asarray(kinds)
    out: Priors = {}
    for rm, s in scores.items():
        decided = s.max(axis=1) > s.min(axis=1)
        picked = quality[np.arange(len(kinds_arr)), np.argmax(s, axis=1)]
        credit = np.where(decided, picked, abstain_reward)
        out[rm] = {}
        for kind in dict.fromkeys(kinds_arr.tolist()):
            rows = kinds_arr == kind
            out[rm][kind] = {"mean": round(float(credit[rows].mean()), 6), "items": int(rows.sum())}
    return out


def save_priors(path: str | os.PathLike[str], priors: Priors, source: dict[str, Any]) -> None:
    doc = {"format": FORMAT, "version": VERSION, "kinds": list(KINDS), "priors": priors}
    doc["source"] = source
    tmp = Path(f"{os.fspath(path)}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_priors(path: str | os.PathLike[str]) -> Priors:
    """The priors of a file `save_priors` wrote; `PriorsError` with the reason otherwise."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PriorsError(f"cannot read priors {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PriorsError(f"{path} is not a laser.priors file")
    if doc.get("version") != VERSION:
        raise PriorsError(f"{path}: priors version {doc.get('version')!r}, expected {VERSION}")
    priors = doc.get("priors")
    if not isinstance(priors, dict):
        raise PriorsError(f"{path}: no priors")
    for rm, by_kind in priors.items():
        for kind, entry in (by_kind or {}).items():
            if kind not in KINDS:
                raise PriorsError(f"{path}: {rm}: unknown kind {kind!r}; known: {KINDS}")
            try:
                mean, items = float(entry["mean"]), int(entry["items"])
            except (KeyError, TypeError, ValueError) as exc:
                raise PriorsError(f"{path}: {rm}/{kind}: needs mean and items") from exc
            if not np.isfinite(mean) or items < 1:
                raise PriorsError(f"{path}: {rm}/{kind}: mean must be finite, items >= 1")
    return priors


def kind_context(kind: str, dim: int, regions: int) -> np.ndarray:
    """The context a prior for `kind` is placed at: that kind's one-hot, nothing else."""
    if regions != len(KINDS):
        raise PriorsError("priors need the `kind` context (featurizer.context = 'kind')")
    x = np.zeros(dim)
    x[KINDS.index(kind)] = 1.0
    return x


def apply_priors(bandit: LinUCB, priors: Priors, max_strength: float) -> int:
    """Fold every prior for an arm of `bandit` that it does not hold yet (a restored state
    keeps the ones it had); returns how many were added."""
    dim, regions = bandit.config.dim, bandit.config.regions
    added = 0
    for rm, by_kind in priors.items():
        if rm not in bandit.arms:
            continue
        for kind, entry in by_kind.items():
            region = KINDS.index(kind)
            if region in bandit.priors.get(rm, {}):
                continue
            strength = min(float(entry["items"]), max_strength)
            bandit.add_prior(rm, kind_context(kind, dim, regions), float(entry["mean"]), strength)
            added += 1
    if added:
        log.info("bandit: %d prior(s) folded in", added)
    return added
