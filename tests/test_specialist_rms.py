"""The specialist RMs and the context builder on hand-checkable cases (no model needed)."""

from __future__ import annotations

import asyncio

import pytest

from laser.server.featurize import Featurizer, query_kind
from laser.server.kinds import KINDS
from laser.server.rms.base import Query
from laser.server.rms.builtin import ArithmeticVerifierRM, GroundingRM
from laser.server.rms.verifiers import check_arithmetic, evaluate, grounding


def _rank(rm: object, query: Query, responses: list[str]) -> list[float]:
    return asyncio.run(rm.score(query, responses))  # type: ignore[attr-defined]


# Hand-written answers, in phrasings our generators never produce: the specialists must judge
# what an answer means (right steps on the question's quantities, support for the answer),
# not its form.
SHELLS = "Tomas collected 12 shells on Monday, and his sister handed him 7 more. How many now?"
COINS = "Mia keeps her savings in 4 boxes of 6 coins. How many coins has she saved?"


def _arith(question: str, answers: list[str]) -> list[float]:
    return _rank(ArithmeticVerifierRM("arith"), Query(question, question), answers)


def test_arith_checks_the_operation_the_question_means() -> None:
    right, wrong_op, wrong_sum = "12 + 7 = 19, so 19.", "12 - 7 = 5, so 5.", "12 + 7 = 18"
    worded, bare_right = "Twelve plus seven is nineteen shells.", "19"
    scores = dict(zip(
        ["right", "wrong_op", "wrong_sum", "worded", "bare"],
        _arith(SHELLS, [right, wrong_op, wrong_sum, worded, bare_right]),
        strict=True,
    ))  # fmt: skip
    # A right step on the question's quantities beats everything; a correct subtraction for
    # "handed him 7 more" is a doubtful step, below a bare number that checks nothing.
    assert scores["right"] == scores["worded"] > scores["bare"] > scores["wrong_op"]
    assert scores["wrong_op"] > scores["wrong_sum"]
    c = check_arithmetic(SHELLS, wrong_op)
    assert (c.correct, c.doubtful, c.follows) == (0, 1, -0.5)


def test_arith_reads_units_and_products() -> None:
    units, sum_instead, bare = "4 boxes × 6 coins = 24 coins", "4 + 6 = 10 coins.", "24"
    worded = "She has four times six, which is 24 coins."
    s = _arith(COINS, [units, sum_instead, bare, worded])
    assert s[0] == s[3] > s[2] > s[1]
    assert check_arithmetic(COINS, units).follows == 1.0


def test_arith_chains_steps_and_does_not_verify_a_bare_answer_by_the_question() -> None:
    q = "A baker bakes 3 trays of 8 rolls and sells 5 rolls. How many rolls are left?"
    chain = "3 x 8 = 24 rolls baked. 24 - 5 = 19 rolls left."
    skipped = "24 - 5 = 19 rolls left."  # 24 is not given: the chain is not checked
    s = _arith(q, [chain, skipped, "19"])
    assert s[0] > s[1] and s[0] > s[2]
    c = check_arithmetic(q, chain)
    assert (c.correct, c.follows, c.question_numbers_used) == (2, 1.0, 1.0)
    # The question's own expression does not verify a bare number any more.
    assert check_arithmetic("What is 40 - 12?", "28").follows == 0
    assert check_arithmetic("What is 40 - 12?", "40 - 12 = 28").follows == 1
    assert evaluate("2 * (3 + 4)") == 14 and evaluate("7 / 0") is None
    assert evaluate("__import__('os')") is None  # only arithmetic is ever evaluated


def test_arith_abstains_when_there_is_nothing_to_check() -> None:
    scores = _arith("Who founded the company?", ["Mara did.", "Kofi founded it."])
    assert scores[0] == scores[1]  # every candidate alike: the RM abstains
    assert len(set(_arith(SHELLS, ["19", "It is nineteen.", "20"]))) == 1


DOC = (
    "Startups grow fast when founders talk to users. Most ideas look bad at first. "
    "The secret ingredient in Mara's soup is saffron. Investors care about growth. "
    "The secret ingredient in Omar's stew is cumin. Good essays are short."
)
SOUP = Query("What is the secret ingredient in Mara's soup?", "p", [DOC])


def test_grounding_supports_the_answer_not_copied_words() -> None:
    answers = [
        "Saffron.",  # right
        "Cumin.",  # a look-alike copied from the sentence about someone else
        "Good essays are short.",  # an unrelated copied sentence
        "She flavours it with saffron, I believe.",  # a paraphrase of the right answer
        "Paprika.",  # made up
        "The secret ingredient in Mara's soup.",  # restates the question
    ]
    s = _rank(GroundingRM("grounding"), SOUP, answers)
    assert s[0] > s[1] > s[2] and s[1] > s[4]
    assert s[3] > s[1]  # the paraphrase of the supported answer is supported
    assert s[4] == 0.0 and s[5] == 0.0


def test_grounding_joins_two_documents() -> None:
    docs = [
        "Essays are long. Lorenzo has worked at the Harbour office for years. People code.",
        "The canteen at the Harbour office serves fish pie every Friday. Trains run late.",
        "The canteen at the Meadow office serves lentil soup every Friday. Nobody knows why.",
    ]
    q = "What does the canteen at Lorenzo's office serve on Fridays?"
    right, decoy, paraphrase = "Fish pie.", "Lentil soup.", "On Fridays it is fish pie."
    s = grounding(q, docs, [right, decoy, paraphrase, "Trains run late."])
    assert s[0] > s[1] > s[3] and s[2] > s[1]


def test_grounding_without_documents_ties() -> None:
    scores = _rank(GroundingRM("grounding"), Query("What is 2 + 2?", "p"), ["4", "5"])
    assert scores == [0.0, 0.0]


def test_grounding_with_nothing_bm25_can_index_scores_instead_of_failing() -> None:
    # Passages of stop words only: BM25 has nothing to rank by; still no error.
    assert grounding("What is it?", ["It is. It was."], ["It is.", "5"]) == [0.0, 0.0]
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
