"""The evaluation's on-disk cache: samples and RM scores keyed by what produced them, so a
rerun (or an interrupted run) pays only for what is new."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_VERSION = 1


class Cache:
    """JSON files keyed by the sha256 of a canonical JSON key, written atomically.

    A run that stops half-way leaves every finished entry behind, so the next run resumes.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0

    @staticmethod
    def digest(key: dict[str, Any]) -> str:
        blob = json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, kind: str, digest: str) -> Path:
        assert self.root is not None
        return self.root / kind / digest[:2] / f"{digest}.json"

    def get(self, kind: str, digest: str) -> dict[str, Any] | None:
        if self.root is None:
            self.misses += 1
            return None
        path = self._path(kind, digest)
        try:
            value: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, or a torn file from a killed run
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, kind: str, digest: str, value: dict[str, Any]) -> None:
        if self.root is None:
            return
        path = self._path(kind, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
