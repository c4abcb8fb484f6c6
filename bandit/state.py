"""Saving and loading selectors: a versioned `.npz` file, never pickle.

File format `laser.bandit`, version 1 (numpy `.npz`, loaded with `allow_pickle=False`):

- `__meta__`: a uint8 array holding UTF-8 JSON
  `{"format": "laser.bandit", "version": 1, "kind": ..., ...}` where `kind` is one of
  `linucb`, `fixed`, `random`, `round_robin`, `percentile_squash`, `baseline_advantage`,
  and the rest is the object's `state_dict()["meta"]` (config, arm names, enabled flags,
  pull counts, reward sums, the generator's state; a baseline's weight and value).
- one array per entry of `state_dict()["arrays"]`, float64 unless said otherwise; for
  LinUCB `a_inv` (K, d, d, in the config's `dtype`: float64 or float32),
  `b` (K, d), `theta` (K, d) and `region_pulls` (K, max(1, regions)), int64: rewarded tries
  per arm and warm-up region), arms in the order of `meta["arms"]`.

Writes go to a temporary file that replaces the target atomically, so a crash leaves
either the old file or the new one.

>>> import tempfile, os
>>> from laser.bandit import LinUCB, LinUCBConfig
>>> path = os.path.join(tempfile.mkdtemp(), "bandit.npz")
>>> save_state(path, LinUCB(LinUCBConfig(dim=4), ["a", "b"]))
>>> load_selector(path).arms
['a', 'b']
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, Protocol

import numpy as np

from laser.bandit.baselines import FixedArm, RoundRobin, UniformRandom
from laser.bandit.errors import StateError
from laser.bandit.linucb import LinUCB, LinUCBConfig
from laser.bandit.normalize import PercentileSquash

FORMAT = "laser.bandit"
VERSION = 1


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def to_bytes(obj: Stateful) -> bytes:
    """Serialise `obj.state_dict()` into the npz format described above."""
    state = obj.state_dict()
    meta = {"format": FORMAT, "version": VERSION, **state["meta"]}
    arrays = {k: np.asarray(v) for k, v in state["arrays"].items()}
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    payload: dict[str, Any] = {"__meta__": blob, **arrays}
    np.savez(buf, **payload)
    return buf.getvalue()


def from_bytes(data: bytes) -> dict[str, Any]:
    """Parse bytes written by `to_bytes` into a state dict; `StateError` if they are not."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            files = {name: npz[name] for name in npz.files}
        meta = json.loads(files.pop("__meta__").tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise StateError(f"not a laser.bandit state file (or corrupt): {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StateError("not a laser.bandit state file (format marker missing)")
    if meta.get("version") != VERSION:
        raise StateError(
            f"state file is version {meta.get('version')!r}; this laser.bandit reads {VERSION}"
        )
    return {"meta": meta, "arrays": files}


def save_state(path: str | os.PathLike[str], obj: Stateful) -> None:
    """Write `obj`'s state to `path` atomically (temp file + fsync + rename)."""
    data = to_bytes(obj)
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path: str | os.PathLike[str], obj: Stateful) -> None:
    """Load a saved state into an existing object of the same kind."""
    state = _read(path)
    kind = getattr(obj, "kind", "percentile_squash")
    if state["meta"].get("kind") != kind:
        raise StateError(f"{path} holds a {state['meta'].get('kind')!r}, not a {kind!r}")
    _apply(obj, state, path)


def load_selector(path: str | os.PathLike[str]) -> LinUCB | FixedArm | UniformRandom | RoundRobin:
    """Rebuild whichever selector was saved at `path`."""
    state = _read(path)
    meta = state["meta"]
    kind = meta.get("kind")
    obj: LinUCB | FixedArm | UniformRandom | RoundRobin
    try:
        if kind == "linucb":
            obj = LinUCB(LinUCBConfig(**meta["config"]))
        elif kind == "fixed":
            obj = FixedArm(meta["fixed"], meta["arms"])
        elif kind == "random":
            obj = UniformRandom()
        elif kind == "round_robin":
            obj = RoundRobin()
        else:
            raise StateError(f"{path}: unknown selector kind {kind!r}")
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, StateError):
            raise
        raise StateError(f"{path}: invalid selector state: {exc}") from exc
    _apply(obj, state, path)
    return obj


def load_squash(path: str | os.PathLike[str]) -> PercentileSquash:
    squash = PercentileSquash()
    load_state(path, squash)
    return squash


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc
    return from_bytes(data)


def _apply(obj: Stateful, state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    try:
        obj.load_state_dict(state)
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, StateError):
            raise
        raise StateError(f"{path}: invalid {state['meta'].get('kind')} state: {exc}") from exc
