"""Grading candidates against the gold reference: accuracy for math and multiple choice,
token F1 and exact match for QA (SQuAD-style, on the answer's first sentence).

The `quality` of a candidate is what every table reports and what LASeR gets as feedback:
1/0 correctness for math and multiple choice, token F1 in [0, 1] for QA.

>>> grade("So the total is 19.", "19", "number")
Grade(quality=1.0, exact=1.0)
>>> round(grade("It was Pebble Works.", "Pebble Works", "span").quality, 3)
0.667
"""

from __future__ import annotations

from dataclasses import dataclass

from laser.server import answers
from laser.server.data import PromptItem

# The RMs get the answer format as a task hint (as a serving request may send `task`),
# never the reference.
KIND_TASK = {"number": "math", "choice": "mc", "span": "qa"}


@dataclass(frozen=True)
class Grade:
    quality: float
    exact: float


def item_kind(item: PromptItem) -> str:
    """`number`, `choice` or `span`: how `item`'s answers are extracted and compared."""
    return answers.answer_kind(item.task, item.reference)


def grade(text: str, reference: str, kind: str) -> Grade:
    """Grade one answer; see the module docstring."""
    if kind == "span":
        pred = answers.short_answer(text)
        f1 = answers.token_f1(pred, reference)
        return Grade(f1, float(pred == answers.normalize_text(reference)))
    ok = float(answers.matches(text, reference, kind))
    return Grade(ok, ok)
