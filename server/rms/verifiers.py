"""The checks behind the specialist reward models: pure functions, no model, no I/O.

- `check_arithmetic`: finds the arithmetic a text states (`12 + 7 = 19`, `3 times 4 is 12`,
  `twelve plus seven is nineteen`), recomputes it exactly, and says whether the final number
  ends a chain of right steps on the question's own quantities, with operations the
  question's wording points to. What the `arith` RM scores.
- `grounding`: how well the sentences of the given documents that match the question (BM25
  via `bm25s`, with one round of query expansion for two-hop questions) support the answer
  a response gives, word by word. What the `grounding` RM scores.

>>> check_arithmetic("What is 12 + 7?", "12 + 7 = 19. The answer is 19.").score
3.25
>>> check_arithmetic("What is 12 + 7?", "12 + 7 = 18, so 18.").score
-3.0
"""

from __future__ import annotations

import ast
import logging
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
    # So do "4 * 6, which is 24" and "... that makes 24".
    (
        re.compile(
            r"(?<=\d),?+\s++(?:(?:which|that)\s++)?+(?:is|equals|makes|gives)\s++(?=\$?-?\d)",
            re.I,
        ),
        " = ",
    ),
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


_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen"]  # fmt: skip
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD_VALUE = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
_NUMBER_WORD = re.compile(
    rf"\b(?P<tens>{'|'.join(_TENS)})(?:[- ](?P<unit>{'|'.join(_UNITS[1:10])}))?\b"
    rf"|\b(?P<single>{'|'.join(_UNITS)})\b",
    re.IGNORECASE,
)
# Unit words between a number and an operator or `=` ("4 boxes x 6 coins = 24 coins"): one or
# two words, dropped so that the arithmetic reads "4 x 6 = 24".
_UNIT_WORDS = re.compile(r"(?<=\d)(?:\s++(?!x\b)[A-Za-z]++){1,2}(?=\s*+(?:[-+*/×÷=]|x\s))")


def _number_words(text: str) -> str:
    """Number words as digits: "twelve" -> 12, "twenty-four" -> 24 (0-99).

    >>> _number_words("Twelve plus seven is nineteen, not twenty-one.")
    '12 plus 7 is 19, not 21.'
    """

    def value(m: re.Match[str]) -> str:
        if m.group("single"):
            return str(_WORD_VALUE[m.group("single").lower()])
        unit = m.group("unit")
        ones = _WORD_VALUE[unit.lower()] if unit else 0
        return str(_WORD_VALUE[m.group("tens").lower()] + ones)

    return _NUMBER_WORD.sub(value, text)


def _words_to_ops(text: str) -> str:
    text = _number_words(text)
    for pattern, repl in _WORD_OPS:
        text = pattern.sub(repl, text)
    return _UNIT_WORDS.sub("", text)


# What the question's wording says about the operation that answers it. Cues are plain
# English, not any data set's templates; a question with none allows every operation.
_CUES: list[tuple[str, re.Pattern[str]]] = [
    (
        "+",
        re.compile(
            r"\b(altogether|in all|in total|total|combined|sum|plus|more|gets|got|given|"
            r"receive[sd]?|adds?|added|joins?|joined|another|and then|both)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "-",
        re.compile(
            r"\b(left|remain\w*|gave|gives|give away|lost|loses|lose|spent|spends|fewer|less|"
            r"minus|difference|ate|eats|sold|sells|took|takes away|how many more|change)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "*",
        re.compile(
            r"\b(each|every|per|times|twice|double|triple|rows? of|packs? of|boxes of|bags? of|"
            r"groups? of|sets? of)\b|\d\s+\w+\s+of\s+\d",
            re.IGNORECASE,
        ),
    ),
    (
        "/",
        re.compile(
            r"\b(shared?|split|equally|divided|half|per person|each get|average)\b",
            re.IGNORECASE,
        ),
    ),
]
_OP_OF = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def plausible_operations(question: str) -> set[str]:
    """The operations the question's wording points to: those of arithmetic it states ("What
    is 12 + 7?"), else those its cue words name ("more", "left", "each", "shared"); every
    operation when it names none.

    >>> sorted(plausible_operations("Ann had 12 shells and was given 7 more. How many now?"))
    ['+']
    >>> sorted(plausible_operations("What is 40 - 12?"))
    ['-']
    """
    stated: set[str] = set()
    for i, m in enumerate(_EXPR.finditer(_words_to_ops(question))):
        if i == MAX_STEPS:
            break
        stated |= _operations(m.group(0))
    if stated:
        return stated
    cued = {op for op, pattern in _CUES if pattern.search(question)}
    return cued or {"+", "-", "*", "/"}


def _operations(expression: str) -> set[str]:
    text = expression.replace("$", "").replace(",", "")
    text = text.replace("×", "*").replace("÷", "/").replace("x", "*")
    if sum(text.count(c) for c in "+-*/()") > MAX_OPERATORS or not _checkable(text):
        return set()
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    return {_OP_OF[type(n.op)] for n in ast.walk(tree) if isinstance(n, ast.BinOp)}


@dataclass(frozen=True)
class ArithCheck:
    """What `check_arithmetic` found in one answer."""

    correct: int
    """Stated equations whose result is right, that use only the question's quantities and
    earlier checked results, with an operation the question's wording points to."""
    wrong: int
    """Stated equations whose result is wrong."""
    doubtful: int
    """Right equations on numbers the question does not give or with an operation its wording
    does not point to ("12 - 7 = 5" for "had 12, was given 7 more")."""
    final: str | None
    """The answer's final number (after `####`, else the last number; number words read)."""
    follows: float
    """+1: the final number ends a chain of correct steps; -1: it is a wrong step's result;
    -0.5: a doubtful step's; 0: none of these (a bare number checks nothing)."""
    question_numbers_used: float
    """Share of the question's numbers that the answer's correct steps use (0 when none)."""

    @property
    def score(self) -> float:
        """2*follows + (correct - wrong - doubtful/2)/steps + 0.25*numbers used, - 1 without a
        final number."""
        steps = self.correct + self.wrong + self.doubtful
        s = 2.0 * self.follows
        s += (self.correct - self.wrong - 0.5 * self.doubtful) / steps if steps else 0.0
        s += 0.25 * self.question_numbers_used
        return s - (1.0 if self.final is None else 0.0)


def _values(expression: str) -> list[Fraction]:
    return [v for n in re.findall(_NUMBER, expression) if (v := _number(n)) is not None]


def check_arithmetic(question: str, response: str) -> ArithCheck:
    """Check that `response` reaches its final number by correct arithmetic on the
    question's quantities, with operations the question's wording points to.

    Each stated equation (`12 + 7 = 19`, `twelve plus seven is nineteen`, `4 boxes x 6
    coins = 24 coins`) is recomputed exactly. It counts as a checked step when it is right,
    uses only numbers the question gives or earlier checked steps produced, and its
    operations are plausible for the question (`plausible_operations`). The final number
    follows when a checked step produced it. Arithmetic the question states itself does not
    verify a bare answer.

    Never raises, and stays linear in the text: what is too long or too big to check (see
    MAX_SCAN_CHARS, MAX_STEPS, MAX_OPERATORS, MAX_DIGITS) is skipped.

    >>> check_arithmetic("Ann had 12 shells and was given 7 more.", "12 + 7 = 19. #### 19")
    ArithCheck(correct=1, wrong=0, doubtful=0, final='19', follows=1.0, question_numbers_used=1.0)
    >>> check_arithmetic("Ann had 12 shells and was given 7 more.", "12 - 7 = 5, so 5").follows
    -0.5
    """
    text = _words_to_ops(response[:MAX_SCAN_CHARS])
    asked = _words_to_ops(question[:MAX_SCAN_CHARS])
    given = set(_values(asked))
    plausible = plausible_operations(question[:MAX_SCAN_CHARS])
    derived: set[Fraction] = set()  # results of checked steps
    doubted: set[Fraction] = set()
    bad: set[Fraction] = set()
    used: set[Fraction] = set()
    correct = wrong = doubtful = steps = 0
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
        if value != claimed:
            wrong += 1
            bad.add(claimed)
            continue
        operands = _values(m.group(0))
        grounded = all(v in given or v in derived for v in operands)
        if grounded and _operations(m.group(0)) <= plausible:
            correct += 1
            derived.add(claimed)
            used.update(v for v in operands if v in given)
        else:
            doubtful += 1
            doubted.add(claimed)
    final_text = answers.extract_number(_number_words(response[:MAX_SCAN_CHARS]))
    final = None if final_text is None else _number(final_text)
    follows = 0.0
    if final is not None:
        if final in derived:
            follows = 1.0
        elif final in bad:
            follows = -1.0
        elif final in doubted:
            follows = -0.5
    share = len(given & used) / len(given) if given else 0.0
    return ArithCheck(correct, wrong, doubtful, final_text, follows, share)


# -- grounding -------------------------------------------------------------------------------
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_FIRST_SENTENCE = re.compile(r"(?<=[.!?])\s|\n")


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


_WORD = re.compile(r"[A-Za-z0-9]++(?:['-][A-Za-z0-9]++)*+")


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def _words(text: str, stop: frozenset[str]) -> list[str]:
    """Lower-cased words (codes like `KX-4471` stay whole), possessives cut, stop words out."""
    out = []
    for w in _WORD.findall(text[:MAX_SCAN_CHARS]):
        w = w.lower()
        if w.endswith("'s"):
            w = w[:-2]
        if w and w not in stop:
            out.append(w)
    return out


def _specific(word: str) -> bool:
    """A word that states something checkable: has a digit, or is a name in the text."""
    return any(c.isdigit() for c in word)


def grounding(
    question: str, documents: Sequence[str], responses: Sequence[str], top_k: int = 3
) -> list[float]:
    """Per response: how well the documents support the ANSWER it gives, where the question
    is about (not how many of its words were copied).

    The documents' sentences are ranked by BM25 against the question, expanded once with the
    words of the best sentence, so that a two-hop question ("the canteen at Lorenzo's
    office") also reaches the sentence about that office. A sentence's relevance is its
    score over the best one's (0-1). Each content word of the response's answer (its first
    sentence, without the question's words and stop words) is supported by the most
    relevant sentence that contains it; the score is the mean support, where words the
    documents never use count less (a paraphrase's own wording) unless they state
    something checkable (numbers, codes), which then count as unsupported claims. A right
    answer scores near 1, a look-alike copied from the sentence about someone else lower,
    an unrelated copied sentence near 0, a made-up answer 0; no documents: every response 0
    (nothing to ground in; the RM abstains). `top_k` is kept for configurations that set it.

    >>> doc = ("Rain fell. The secret ingredient in Mara's soup is saffron. "
    ...        "The secret ingredient in Omar's stew is cumin. Dogs bark.")
    >>> q = "What is the secret ingredient in Mara's soup?"
    >>> [round(s, 2) for s in grounding(q, [doc], ["Saffron.", "Cumin.", "Dogs bark.", "Mint."])]
    [1.0, 0.33, 0.0, 0.0]
    """
    del top_k
    bm25s, stop = _bm25s(), _stopwords()
    sentences = [s for doc in documents for s in _SENTENCE.split(doc[:MAX_SCAN_CHARS].strip()) if s]
    if not sentences:
        return [0.0 for _ in responses]
    sent_words = [_words(s, stop) for s in sentences]
    q_words = _words(question, stop)
    # Nothing to rank by (a question or documents of stop words only): all alike.
    relevance = [1.0] * len(sentences)
    if any(sent_words) and q_words:
        retriever = bm25s.BM25()
        retriever.index([w or ["\0"] for w in sent_words], show_progress=False)
        first = [float(v) for v in retriever.get_scores(q_words)]
        best = max(range(len(first)), key=first.__getitem__)
        # One round of expansion with the best sentence's words, at half weight.
        second = [float(v) for v in retriever.get_scores(sent_words[best])]
        combined = [a + 0.5 * b for a, b in zip(first, second, strict=True)]
        top = max(combined)
        if top > 0:
            relevance = [max(0.0, c) / top for c in combined]
    support: dict[str, float] = {}
    for words, rel in zip(sent_words, relevance, strict=True):
        for w in words:
            support[w] = max(support.get(w, 0.0), rel)
    asked = set(q_words)
    out = []
    for response in responses:
        head = _FIRST_SENTENCE.split(response.strip(), maxsplit=1)[0]
        claims = [w for w in dict.fromkeys(_words(head, stop)) if w not in asked]
        if not claims:
            out.append(0.0)
            continue
        weights = [1.0 if w in support or _specific(w) else 0.3 for w in claims]
        total = sum(wt * support.get(w, 0.0) for w, wt in zip(claims, weights, strict=True))
        out.append(total / sum(weights))
    return out
