"""The checks behind the specialist reward models: pure functions, no model, no I/O.

- `check_arithmetic`: finds the arithmetic a text states (`12 + 7 = 19`, `3 times 4 is 12`),
  recomputes it exactly, and says whether the final number follows from a correct step.
  What the `arith` RM scores.
- `grounding`: how much of an answer's new content (words beyond the question's) is found
  in the passages of the given documents that best match the question (BM25 via `bm25s`).
  What the `grounding` RM scores.

>>> check_arithmetic("What is 12 + 7?", "12 + 7 = 19. The answer is 19.").score
3.25
>>> check_arithmetic("What is 12 + 7?", "12 + 7 = 18, so 18.").score
-2.75
"""

from __future__ import annotations

import ast
import logging
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from laser.server import answers

# -- arithmetic ------------------------------------------------------------------------------
# Bounds that keep a check fast and exception-free on any text (a request's question can be
# 64K characters, a candidate as long as max_tokens allows). Real worked answers stay far
# below them; what exceeds one is not checked (it contributes nothing), never an error.
MAX_SCAN_CHARS = 100_000
"""Characters of a question or response scanned for arithmetic (the head)."""
MAX_STEPS = 256
"""Equations checked per response, and expressions per question."""
MAX_OPERATORS = 64
"""Operators and parentheses in one expression (the parse and its walk recurse per level)."""
MAX_DIGITS = 100
"""Digits in a row in one number (Python refuses int(str) above 4,300, and giant values
make exact arithmetic slow)."""

_NUMBER = r"\$?\d[\d,]*(?:\.\d+)?"
_OP = r"[-+*/×÷x]"
# An expression is two or more numbers joined by operators (a number may open with `(` and
# close with `)`); an equation is one followed by `=` and a number. The quantifiers are
# possessive (`*+`, `++`): giving anything back could never lead to a match here, and
# backtracking made long runs of digits, commas, blanks or terms quadratic or worse. An
# expression never starts inside a number (after `digit,`), so a long `1,1,1,...` is read once.
_NUMBER_ONCE = r"\$?\d[\d,]*+(?:\.\d+)?+"
_OPERAND = rf"(?:\(\s*+)?{_NUMBER_ONCE}\s*+\)?+"
_EXPR = re.compile(rf"(?<![\w.])(?:(?=\()|(?<![\d,],)){_OPERAND}(?:\s*+{_OP}\s*+{_OPERAND})++")
_RESULT = re.compile(rf"\s*+=\s*+(?P<rhs>-?{_NUMBER_ONCE})")
_DIGIT_RUN = re.compile(r"\d+")
_WORD_OPS = [
    (re.compile(r"\bmultiplied by\b", re.I), " * "),
    (re.compile(r"\bdivided by\b", re.I), " / "),
    (re.compile(r"\bplus\b", re.I), " + "),
    (re.compile(r"\bminus\b", re.I), " - "),
    (re.compile(r"\btimes\b", re.I), " * "),
    # "12 + 7 is 19" / "equals 19" / "makes 19" state a result like "= 19".
    (re.compile(r"(?<=\d)\s+(?:is|equals|makes|gives)\s+(?=\$?-?\d)", re.I), " = "),
]
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _checkable(text: str) -> bool:
    """No run of digits longer than MAX_DIGITS (commas already removed)."""
    return all(len(run) <= MAX_DIGITS for run in _DIGIT_RUN.findall(text))


def _number(text: str) -> Fraction | None:
    """The exact value of a number as written (`$1,250.5`), or None if it is too long to check.

    >>> _number("$1,250.50"), _number("9" * 5000)
    (Fraction(2501, 2), None)
    """
    clean = text.replace("$", "").replace(",", "").strip()
    return Fraction(clean) if _checkable(clean) else None


def evaluate(expression: str) -> Fraction | None:
    """The exact value of `+ - * /` arithmetic on numbers, or None (division by zero, anything
    else than numbers, operators and parentheses, or more than MAX_OPERATORS operators or
    MAX_DIGITS digits in a number: too big to check).

    >>> evaluate("3 x (4 + 1)"), evaluate("1 / 0"), evaluate("1+" * 5000 + "1")
    (Fraction(15, 1), None, None)
    """
    text = expression.replace("$", "").replace(",", "")
    text = text.replace("×", "*").replace("÷", "/").replace("x", "*")
    # Checked before parsing: ast.parse and the walk recurse once per operator or
    # parenthesis (RecursionError near a thousand), and int() refuses 4,300+ digits.
    if sum(text.count(c) for c in "+-*/()") > MAX_OPERATORS or not _checkable(text):
        return None
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: a NUL byte
        return None

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))  # type: ignore[no-any-return]
        raise ValueError("not arithmetic")

    try:
        return walk(tree.body)
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def _words_to_ops(text: str) -> str:
    for pattern, repl in _WORD_OPS:
        text = pattern.sub(repl, text)
    return text


@dataclass(frozen=True)
class ArithCheck:
    """What `check_arithmetic` found in one answer."""

    correct: int
    """Stated equations whose result is right."""
    wrong: int
    """Stated equations whose result is wrong."""
    final: str | None
    """The answer's final number (after `####`, else the last number)."""
    follows: int
    """+1: the final number is the value of a correct step (or of the arithmetic the question
    states); -1: it is only the result of a wrong step; 0: neither (nothing to check)."""
    question_numbers_used: float
    """Share of the question's numbers that the answer's equations use (0 when none)."""

    @property
    def score(self) -> float:
        """2*follows + (correct - wrong)/steps + 0.25*numbers used - 1 if no final number."""
        steps = self.correct + self.wrong
        s = 2.0 * self.follows + ((self.correct - self.wrong) / steps if steps else 0.0)
        s += 0.25 * self.question_numbers_used
        return s - (1.0 if self.final is None else 0.0)


def check_arithmetic(question: str, response: str) -> ArithCheck:
    """Recompute the arithmetic `response` states and check its final number against it.

    Never raises, and stays linear in the text: what is too long or too big to check (see
    MAX_SCAN_CHARS, MAX_STEPS, MAX_OPERATORS, MAX_DIGITS) is skipped.

    >>> check_arithmetic("q", "3 * 4 = 12. #### 12")
    ArithCheck(correct=1, wrong=0, final='12', follows=1, question_numbers_used=0.0)
    """
    text = _words_to_ops(response[:MAX_SCAN_CHARS])
    asked = question[:MAX_SCAN_CHARS]
    good: set[Fraction] = set()
    bad: set[Fraction] = set()
    used: set[Fraction] = set()
    correct = wrong = steps = 0
    # The equations `lhs = rhs` the response states, left to right, not overlapping.
    pos = 0
    while steps < MAX_STEPS and (m := _EXPR.search(text, pos)):
        pos = m.end()
        eq = _RESULT.match(text, pos)
        if eq is None:
            continue
        pos = eq.end()
        steps += 1
        value, claimed = evaluate(m.group(0)), _number(eq.group("rhs"))
        if value is None or claimed is None:
            continue
        used.update(v for n in re.findall(_NUMBER, m.group(0)) if (v := _number(n)) is not None)
        if value == claimed:
            correct += 1
            good.add(claimed)
        else:
            wrong += 1
            bad.add(claimed)
    # Arithmetic the question itself states ("What is 23 + 14?") is checked the same way.
    for i, m in enumerate(_EXPR.finditer(_words_to_ops(asked))):
        if i == MAX_STEPS:
            break
        value = evaluate(m.group(0))
        if value is not None:
            good.add(value)
    final_text = answers.extract_number(response)
    final = None if final_text is None else _number(final_text)
    follows = 0
    if final is not None:
        if final in good:
            follows = 1
        elif final in bad:
            follows = -1
    q_numbers = {v for n in re.findall(_NUMBER, asked) if (v := _number(n)) is not None}
    share = len(q_numbers & used) / len(q_numbers) if q_numbers else 0.0
    return ArithCheck(correct, wrong, final_text, follows, share)


# -- grounding -------------------------------------------------------------------------------
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def passages(documents: Sequence[str], sentences: int = 2) -> list[str]:
    """Overlapping windows of `sentences` sentences over every document (a fact near a
    window's edge is whole in the next one).

    >>> passages(["A b. C d. E f."], sentences=2)
    ['A b. C d.', 'C d. E f.']
    """
    out = []
    for doc in documents:
        sents = [s for s in _SENTENCE.split(doc.strip()) if s]
        if len(sents) <= sentences:
            out.append(" ".join(sents))
            continue
        out.extend(" ".join(sents[i : i + sentences]) for i in range(len(sents) - sentences + 1))
    return [p for p in out if p]


def _bm25s() -> Any:
    import bm25s

    # bm25s sets its own logger to DEBUG on import and logs every index it builds (one per
    # document-QA request); our logs keep its warnings only.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _tokens(texts: Sequence[str]) -> list[list[str]]:
    bm25s = _bm25s()
    tokenized: list[list[str]] = bm25s.tokenize(
        list(texts), stopwords="en", return_ids=False, show_progress=False
    )
    return tokenized


def grounding(
    question: str, documents: Sequence[str], responses: Sequence[str], top_k: int = 3
) -> list[float]:
    """Per response: the IDF-weighted share of its new words (not stop words, not in the
    question) that occur in the `top_k` passages BM25 ranks highest for the question, plus
    half that share over the whole document; 0 for a response that adds nothing, and every
    response 0 when there are no documents (nothing to ground in).

    >>> doc = "Rain fell. The secret ingredient in Mara's soup is saffron. Dogs bark."
    >>> q = "What is the secret ingredient in Mara's soup?"
    >>> [round(s, 2) for s in grounding(q, [doc], ["Saffron.", "It is cumin.", "Mara's soup."])]
    [1.5, 0.0, 0.0]
    >>> grounding("What is x?", ["x is 5. y is 2."], ["5"])  # no word BM25 can index
    [0.0]
    """
    bm25s = _bm25s()
    parts = passages(documents)
    if not parts:
        return [0.0 for _ in responses]
    part_tokens = _tokens(parts)
    q_tokens = _tokens([question])[0]
    if any(part_tokens) and q_tokens:
        retriever = bm25s.BM25()
        retriever.index(part_tokens, show_progress=False)
        ranking = retriever.get_scores(q_tokens)
    else:  # nothing to rank by (a question or documents of stop words only): document order
        ranking = [0.0] * len(parts)
    top = sorted(range(len(parts)), key=lambda i: -float(ranking[i]))[:top_k]
    top_vocab = {t for i in top for t in part_tokens[i]}
    all_vocab = {t for toks in part_tokens for t in toks}
    n = len(parts)
    df: dict[str, int] = {}
    for toks in part_tokens:
        for t in set(toks):
            df[t] = df.get(t, 0) + 1
    asked = set(q_tokens)
    out = []
    for toks in _tokens(responses):
        new = [t for t in dict.fromkeys(toks) if t not in asked]
        if not new:
            out.append(0.0)
            continue
        # Words the documents never use weigh most (a made-up claim): idf as if df = 0.
        w = {t: math.log(1 + (n - df.get(t, 0) + 0.5) / (df.get(t, 0) + 0.5)) for t in new}
        total = sum(w.values())
        in_top = sum(w[t] for t in new if t in top_vocab) / total
        in_doc = sum(w[t] for t in new if t in all_vocab) / total
        out.append(in_top + 0.5 * in_doc)
    return out
