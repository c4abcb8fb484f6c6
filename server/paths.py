"""Confinement of file paths that arrive over the API (RM folders, adapters).

A caller may only name paths under the server's configured folders (`model_roots`, plus the
data directory); `..`, symlinks pointing out and absolute paths elsewhere are refused.

>>> from pathlib import Path
>>> confine("models/rm", [Path("/srv")]).as_posix()
'/srv/models/rm'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class PathNotAllowedError(ValueError):
    """A path outside every allowed root."""


def confine(path: str | Path, roots: Sequence[Path]) -> Path:
    """The resolved `path` if it lies inside one of `roots`, else `PathNotAllowedError`.

    Relative paths are taken relative to the first root.
    """
    if not roots:
        raise PathNotAllowedError("this server accepts no file paths over the API")
    p = Path(path)
    if not p.is_absolute():
        p = roots[0] / p
    resolved = p.resolve()
    for root in roots:
        if resolved.is_relative_to(root.resolve()):
            return resolved
    raise PathNotAllowedError(
        f"path {str(path)!r} is outside the allowed folders "
        f"({', '.join(str(r) for r in roots)}); set `model_roots` in the server config"
    )


# Options of each reward-model kind that name a local path (the model, its tokenizer, a
# token file).
PATH_OPTIONS: dict[str, tuple[str, ...]] = {
    "hf": ("path",),
    "vllm_pooling": ("path",),
    "remote": ("tokenizer", "api_key_file"),
}


class PathOptionError(ValueError):
    """A path option that is not a string or lies outside the allowed folders."""

    def __init__(self, option: str, message: str, allowed: bool) -> None:
        super().__init__(message)
        self.option, self.allowed = option, allowed


def confine_options(kind: str, options: dict[str, Any], roots: Sequence[Path]) -> dict[str, Any]:
    """`options` of a reward model sent over the API, with every folder it names confined to
    `roots` (and replaced by its resolved form, so what is stored is what was checked).

    >>> confine_options("hf", {"path": "rm"}, [Path("/srv")])["path"]
    '/srv/rm'
    """
    out = dict(options)
    for key in PATH_OPTIONS.get(kind, ()):
        value = out.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise PathOptionError(key, f"options.{key} must be a string (a folder)", True)
        try:
            out[key] = str(confine(value, roots))
        except PathNotAllowedError as exc:
            raise PathOptionError(key, f"options.{key}: {exc}", False) from None
        except (ValueError, OSError) as exc:  # NUL bytes, names too long
            raise PathOptionError(key, f"options.{key} is not a usable path: {exc}", True) from None
    return out
