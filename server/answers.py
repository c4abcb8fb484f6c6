"""Final-answer extraction and comparison, shared by the agreement RM and evaluation."""

from __future__ import annotations

import re
import string
from collections import Counter

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# `\s*(?:(?:is|:)\s*)?`, not `\s*(?:is|:)?\s*`: the same matches, but two adjacent `\s*`
# try every split of a run of spaces (quadratic on "answer" + a long run of blanks).
_CHOICE = re.compile(r"\b(?:answer|option|choice)\s*(?:(?:is|:)\s*)?\(?([A-D])\)?\b", re.IGNORECASE)
_LONE_CHOICE = re.compile(r"^\s*\(?([A-D])[).:\s]")


def extract_number(text: str) -> str | None:
    """The final numeric answer: after `####` if present, else the last number.

    >>> extract_number("3 apples + 4 = 7 apples. #### 7")
    '7'
    >>> extract_number("It costs $1,250.00")
    '1250'
    """
    text = text.rpartition("####")[2]
    nums = _NUM.findall(text)
    if not nums:
        return None
    value: str = nums[-1].replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def extract_choice(text: str) -> str | None:
    """A multiple-choice letter A-D.

    >>> extract_choice("The answer is (C) because ...")
    'C'
    """
    m = _CHOICE.search(text) or _LONE_CHOICE.search(text)
    return m.group(1).upper() if m else None


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, articles or extra spaces.

    >>> normalize_text("The Cat's  hat, a RED one!")
    'cats hat red one'
    """
    text = text.lower().translate(_NO_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


_FIRST_BREAK = re.compile(r"(?<=[.!?])\s|\n")


def short_answer(text: str) -> str:
    """The first line/sentence of a free-text answer, normalised.

    >>> short_answer("  Paris. It is the capital.")
    'paris'
    """
    return normalize_text(_FIRST_BREAK.split(text.strip(), maxsplit=1)[0])


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 between two texts (after normalisation).

    >>> round(token_f1("the cat sat", "a cat sat down"), 3)
    0.8
    """
    p, r = normalize_text(prediction).split(), normalize_text(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def answer_kind(task: str | None, reference: str | None = None) -> str:
    """Which extractor fits: `number` (math), `choice` (multiple choice) or `span` (QA)."""
    t = (task or "").lower()
    if t in {"math", "gsm8k", "arithmetic"}:
        return "number"
    if t in {"mc", "gpqa", "multiple_choice", "mmlu"}:
        return "choice"
    if t in {"qa", "longqa", "long_qa", "multidoc_qa"}:
        return "span"
    if reference is not None:
        if extract_choice(reference) and len(reference.strip()) <= 3:
            return "choice"
        if _NUM.fullmatch(reference.strip().replace(",", "")):
            return "number"
    return "span"


def extract(text: str, kind: str) -> str | None:
    if kind == "number":
        return extract_number(text)
    if kind == "choice":
        return extract_choice(text)
    return short_answer(text) or None


def matches(text: str, reference: str, kind: str) -> bool:
    """Whether a candidate's answer equals the reference's (spans: F1 >= 0.5)."""
    if kind == "span":
        if token_f1(short_answer(text), reference) >= 0.5:
            return True
        norm = normalize_text(reference)
        return norm != "" and norm in normalize_text(text)
    got = extract(text, kind)
    want = (
        extract(reference, kind)
        if kind != "choice"
        else (extract_choice(reference) or reference.strip().upper()[:1])
    )
    return got is not None and got == want
