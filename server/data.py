"""Prompt items shared by training and evaluation: the JSONL format users bring, and the
data sets our code builds offline.

One line of a prompts file (JSONL), every field but `prompt` optional:

    {"prompt": "What is 12 + 7?", "reference": "19", "task": "math"}
    {"prompt": "Who wrote it?", "document": "...", "reference": "Paul Graham", "task": "qa"}
    {"prompt": "...", "documents": ["...", "..."], "task": "qa"}

>>> items = arithmetic_items(3, seed=0)
>>> items[0].task
'math'
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A prompts file or data set that cannot be used; the message names the line."""


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    documents: list[str] = field(default_factory=list)
    reference: str | None = None
    task: str | None = None
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, [])}
        if len(self.documents) == 1:
            out.pop("documents")
            out["document"] = self.documents[0]
        return out


def parse_item(obj: Any, where: str) -> PromptItem:
    """One JSON object -> PromptItem; `where` (e.g. "prompts.jsonl:7") prefixes errors."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - {"prompt", "document", "documents", "reference", "task", "id"}
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: `prompt` must be a non-empty string")
    if "document" in obj and "documents" in obj:
        raise DataError(f"{where}: give `document` or `documents`, not both")
    docs: Any = [obj["document"]] if "document" in obj else obj.get("documents", [])
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
        raise DataError(f"{where}: `document` must be a string, `documents` a list of strings")
    for key in ("reference", "task", "id"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str | int | float):
            raise DataError(f"{where}: `{key}` must be a string")
    ref = obj.get("reference")
    return PromptItem(
        prompt=prompt,
        documents=list(docs),
        reference=None if ref is None else str(ref),
        task=obj.get("task"),
        id=None if obj.get("id") is None else str(obj["id"]),
    )


def load_prompts(path: str | Path, require_reference: bool = False) -> list[PromptItem]:
    """Read a prompts JSONL file; a bad line raises `DataError` naming file and line.

    `require_reference=True` (evaluation) also rejects a line without `reference`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {str(path)!r} does not exist")
    items: list[PromptItem] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            item = parse_item(obj, where)
            if require_reference and item.reference is None:
                raise DataError(f"{where}: evaluation needs a `reference` (the gold answer)")
            items.append(item)
    if not items:
        raise DataError(f"prompts file {str(path)!r} holds no prompts")
    return items


def write_prompts(path: str | Path, items: Iterable[PromptItem]) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.to_json()) + "\n")


_NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
_THINGS = ["apples", "books", "coins", "pens", "shells", "stamps", "marbles", "cards"]


def arithmetic_items(n: int, seed: int = 0) -> list[PromptItem]:
    """Simple arithmetic word problems with known answers (task `math`).

    Small enough that SmolLM2-135M sometimes gets them right, so best-of-n and training
    have room to help: one- or two-digit additions and subtractions, asked plainly or as a
    short story.
    """
    rng = random.Random(seed)
    items = []
    for i in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 30)
        style = rng.randrange(3)
        if style == 0:
            prompt, answer = f"What is {a} + {b}? Answer with a number.", a + b
        elif style == 1:
            a, b = max(a, b), min(a, b)
            prompt, answer = f"What is {a} - {b}? Answer with a number.", a - b
        else:
            who, what = rng.choice(_NAMES), rng.choice(_THINGS)
            prompt = (
                f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have "
                "now? Answer with a number."
            )
            answer = a + b
        items.append(PromptItem(prompt=prompt, reference=str(answer), task="math", id=f"arith-{i}"))
    return items
