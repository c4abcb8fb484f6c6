"""The specialist RMs and the context builder on hand-checkable cases (no model needed)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from laser.server.featurize import KINDS, Featurizer, query_kind
from laser.server.rms.base import Query
from laser.server.rms.builtin import ArithmeticVerifierRM, GroundingRM
from laser.server.rms.verifiers import check_arithmetic, evaluate, grounding


def _rank(rm: object, query: Query, responses: list[str]) -> list[float]:
    return asyncio.run(rm.score(query, responses))  # type: ignore[attr-defined]


def test_arithmetic_verifier_prefers_correct_worked_answers() -> None:
    q = Query("Ana has 23 pens and gets 14 more. How many pens does Ana have now?", "p")
    right = "Ana has 23 + 14 = 37 pens. The answer is 37."
    wrong_step = "Ana has 23 + 14 = 36 pens. The answer is 36."
    wrong_final = "23 + 14 = 37, so Ana has 38 pens."
    no_number = "Ana has many pens."
    scores = _rank(ArithmeticVerifierRM("arith"), q, [wrong_step, wrong_final, no_number, right])
    assert int(np.argmax(scores)) == 3
    assert scores[3] > scores[1] > scores[0]  # a right step with a wrong final beats a wrong step
    assert scores[2] < scores[3]
    c = check_arithmetic(q.question, wrong_step)
    assert (c.correct, c.wrong, c.final, c.follows) == (0, 1, "36", -1)
    c = check_arithmetic(q.question, right)
    assert (c.correct, c.wrong, c.follows, c.question_numbers_used) == (1, 0, 1, 1.0)


def test_arithmetic_verifier_checks_the_question_and_worded_steps() -> None:
    # The question states the arithmetic: a bare final answer is checked against it.
    assert check_arithmetic("What is 40 - 12?", "It is 28.").follows == 1
    assert check_arithmetic("What is 40 - 12?", "It is 27.").follows == 0
    # Steps in words and chains of steps.
    c = check_arithmetic("q", "3 times 4 is 12, and 12 plus 5 equals 17. #### 17")
    assert (c.correct, c.wrong, c.final, c.follows) == (2, 0, "17", 1)
    c = check_arithmetic("q", "$1,200 / 4 = $300 each")
    assert (c.correct, c.follows) == (1, 1)
    assert evaluate("2 * (3 + 4)") == 14 and evaluate("7 / 0") is None
    assert evaluate("__import__('os')") is None  # only arithmetic is ever evaluated


def test_arithmetic_verifier_ties_when_there_is_nothing_to_check() -> None:
    q = Query("Who founded the company?", "p")
    scores = _rank(ArithmeticVerifierRM("arith"), q, ["Mara did.", "Kofi founded it."])
    assert scores[0] == scores[1]  # a tie: serving takes the first candidate (np.argmax)


DOC = (
    "Startups grow fast when founders talk to users. Most ideas look bad at first. "
    "The secret ingredient in Mara's soup is saffron. Investors care about growth. "
    "Kofi grew up in the city of Osaka. Good essays are short."
)


def test_grounding_prefers_answers_the_document_supports() -> None:
    q = Query("What is the secret ingredient in Mara's soup?", "p", [DOC])
    supported = "Saffron."
    unsupported = "The secret ingredient is cumin."
    off_topic = "Good essays are short."  # in the document, far from the question
    restated = "The secret ingredient in Mara's soup."
    scores = _rank(GroundingRM("grounding"), q, [unsupported, off_topic, restated, supported])
    assert int(np.argmax(scores)) == 3
    assert scores[3] > scores[1] > scores[0]
    assert scores[2] == 0.0  # adds nothing beyond the question
    # Multi-document: each fact is found in its own document.
    two = grounding(
        "In which city did Kofi grow up, and what is in Mara's soup?",
        ["Kofi grew up in the city of Osaka. Rain fell.", "Mara's soup has saffron. Dogs bark."],
        ["Osaka and saffron", "Lisbon and cumin"],
    )
    assert two[0] > 1.0 > two[1]


def test_grounding_without_documents_ties() -> None:
    scores = _rank(GroundingRM("grounding"), Query("What is 2 + 2?", "p"), ["4", "5"])
    assert scores == [0.0, 0.0]


def test_grounding_with_nothing_bm25_can_index_scores_instead_of_failing() -> None:
    # Passages of one-letter words and digits only: BM25 has an empty vocabulary (it used to
    # raise, which counted as an RM fault and fell back).
    assert grounding("What is x?", ["x is 5. y is 2."], ["5", "It is 5."]) == [0.0, 0.0]
    assert grounding("the of", ["Mara likes saffron. Dogs bark."], ["saffron"])[0] > 0


@pytest.mark.parametrize(
    ("question", "doc", "task", "kind"),
    [
        ("What is 12 + 7? Answer with a number.", False, None, "math"),
        ("Ana has 3 pens and buys 4 more. How many pens does she have?", False, None, "math"),
        ("Which is a noble gas?\nA) Neon\nB) Iron\nC) Salt\nD) Sand", False, None, "mc"),
        ("Who grew up in Osaka?", True, None, "qa"),
        ("Write a haiku about rain.", False, None, "general"),
        ("Write a haiku about rain.", False, "gsm8k", "math"),  # the hint wins when it is known
        ("What is 2 + 2?", False, "qa", "qa"),
        ("What is 2 + 2?", False, "poetry", "math"),  # an unknown hint is ignored
    ],
)
def test_query_kind(question: str, doc: bool, task: str | None, kind: str) -> None:
    assert query_kind(question, doc, task) == kind


def test_kind_context_is_small_and_needs_no_encoder() -> None:
    f = Featurizer(None, context="kind", embed_dims=0)
    assert f.dim == len(KINDS) + 3 and f.regions == len(KINDS)
    x = f.features_batch(["What is 2 + 3?", "Who is Mara?"], [False, True], [None, None])
    assert x.shape == (2, f.dim)
    assert x[0, KINDS.index("math")] == 1.0 and x[1, KINDS.index("qa")] == 1.0
    assert x[:, : len(KINDS)].sum(axis=1).tolist() == [1.0, 1.0]
    assert x[1, len(KINDS)] == 1.0 and x[0, len(KINDS)] == 0.0  # has-document feature
    assert (x[:, -1] == 1.0).all()  # bias
    with pytest.raises(ValueError):
        Featurizer(None, context="kind", embed_dims=4)  # embedding dims need an encoder
