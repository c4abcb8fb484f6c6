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
