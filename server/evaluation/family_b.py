"""The second generator family: the same three kinds of query as `data.py`'s arithmetic,
`longqa` and `multidoc_qa`, written independently (other templates, phrasings and answer
types), so that a result learnt on one family can be scored on the other.

- `word_math`: one- and two-step word problems (sums, differences, products) with units
  and numbers written as words; the answer is a number.
- `code_qa`: one essay excerpt holding a made-up code about a person, phrased unlike the
  question, plus a look-alike code about someone else; the answer is a code (`KX-4471`).
- `bridge_qa`: three excerpts: one says where a person is, another what that place has, the
  third the same of a decoy place; the answer is a span found only by joining the two.

>>> [it.task for it in word_math_items(2, seed=0)]
['math', 'math']
>>> item = code_qa_items(1, seed=0)[0]
>>> item.reference in item.documents[0]
True
"""

from __future__ import annotations

import random

from laser.server.data import PromptItem
from laser.server.evaluation.essays import _excerpt, _excerpts, _insert

_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen", "twenty",
]  # fmt: skip
_WHO = ["Nadia", "Oskar", "Beatriz", "Chidi", "Wen", "Astrid", "Mateo", "Leila", "Jonas", "Amara"]
_ASK = ["", " Give the final number.", " Reply with just the number.", " Show your working."]


def _num(rng: random.Random, v: int) -> str:
    """`v` in digits, or (a third of the time, when it is small) in words."""
    return _WORDS[v] if v < len(_WORDS) and rng.random() < 0.33 else str(v)


def _word_problem(rng: random.Random) -> tuple[str, int]:
    who = rng.choice(_WHO)
    style = rng.randrange(5)
    if style == 0:
        a, b = rng.randint(3, 9), rng.randint(3, 9)
        unit, box = rng.choice([("jars", "shelf"), ("eggs", "tray"), ("chairs", "row")])
        text = f"Each {box} holds {_num(rng, b)} {unit}. {who} fills {_num(rng, a)} {box}s."
        return f"{text} How many {unit} is that?", a * b
    if style == 1:
        a, b = rng.randint(12, 60), rng.randint(2, 11)
        item = rng.choice(["stickers", "postcards", "beads", "tickets"])
        text = f"{who} had {_num(rng, a)} {item} and gave {_num(rng, b)} of them away."
        return f"{text} How many {item} are left?", a - b
    if style == 2:
        a, b = rng.randint(5, 40), rng.randint(5, 40)
        return (
            f"A car park has {_num(rng, a)} red cars and {_num(rng, b)} blue cars. "
            "How many cars are there altogether?",
            a + b,
        )
    if style == 3:
        a, b, c = rng.randint(2, 6), rng.randint(3, 8), rng.randint(1, 5)
        return (
            f"{who} buys {_num(rng, a)} packs of pencils with {_num(rng, b)} pencils in each "
            f"pack, then loses {_num(rng, c)} pencils. How many pencils does {who} have now?",
            a * b - c,
        )
    a, b = rng.randint(10, 45), rng.randint(10, 45)
    return (
        f"A train travels {a} km before lunch and {b} km after lunch. "
        "How many kilometres does it travel in total?",
        a + b,
    )


def word_math_items(n: int, seed: int = 0) -> list[PromptItem]:
    """Word problems whose answer is a whole number (task hint `math`)."""
    rng = random.Random(f"word_math-{seed}")
    items = []
    for i in range(n):
        question, answer = _word_problem(rng)
        items.append(
            PromptItem(
                prompt=question + rng.choice(_ASK),
                reference=str(answer),
                task="math",
                id=f"word_math-{i}",
            )
        )
    return items


# (statement about {p} with code {v}, a question that paraphrases it)
_CODES: list[tuple[str, str]] = [
    (
        "For the storage room on the third floor, {p} chose the door code {v}.",
        "Which door code did {p} pick for the third-floor storage room?",
    ),
    (
        "{p} registered the sailing boat under the number {v}.",
        "Under what registration number is {p}'s boat listed?",
    ),
    (
        "The parcel {p} posted last week can be tracked with the reference {v}.",
        "What tracking reference belongs to the parcel that {p} mailed?",
    ),
    (
        "When {p} booked the conference hall, the confirmation read {v}.",
        "What confirmation code did {p} get for the hall booking?",
    ),
    (
        "The laptop issued to {p} carries the asset tag {v}.",
        "What asset tag is on {p}'s laptop?",
    ),
]
_PEOPLE_B = ["Greta", "Hamid", "Ines", "Joaquin", "Keiko", "Lorenzo", "Maeve", "Nikolai"]


def _code(rng: random.Random) -> str:
    letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))
    return f"{letters}-{rng.randint(1000, 9999)}"


def code_qa_items(n: int, seed: int = 0, doc_chars: int = 2400) -> list[PromptItem]:
    """Single-document QA whose answer is a code; a look-alike code about another person in
    the same document makes copying any code a wrong answer. Depth in the id."""
    rng = random.Random(f"code_qa-{seed}")
    items = []
    for i in range(n):
        statement, question = rng.choice(_CODES)
        p, q = rng.sample(_PEOPLE_B, 2)
        v, decoy = _code(rng), _code(rng)
        _, doc = _excerpt(rng, doc_chars)
        depth = rng.choice([0.15, 0.35, 0.5, 0.65, 0.8])
        doc = _insert(doc, statement.format(p=p, v=v), depth)
        doc = _insert(doc, statement.format(p=q, v=decoy), rng.choice([0.05, 0.95]))
        items.append(
            PromptItem(
                prompt=question.format(p=p) + " Answer with the code only.",
                documents=[doc],
                reference=v,
                task="qa",
                id=f"code_qa-{i}-d{depth:.2f}",
            )
        )
    return items


# (where {p} works: {place}; what {place} has: {v}; the question joining them)
_BRIDGES: list[tuple[str, str, str, list[str], list[str]]] = [
    (
        "{p} has worked at the {place} office for years.",
        "The canteen at the {place} office serves {v} every Friday.",
        "What does the canteen at {p}'s office serve on Fridays?",
        ["Harbour", "Meadow", "Granite", "Willow", "Summit"],
        ["lentil soup", "fish pie", "mushroom risotto", "bean chilli", "pumpkin curry"],
    ),
    (
        "{p} keeps a boat at the {place} marina.",
        "Boats at the {place} marina are looked after by a harbour master named {v}.",
        "Who looks after the boats at the marina where {p} keeps a boat?",
        ["Eastbay", "Redcliff", "Sandmere", "Oakport", "Larkhaven"],
        ["Edith Crane", "Bruno Feld", "Marta Olsen", "Ike Parry", "Dana Roux"],
    ),
    (
        "{p} studies at the {place} library most afternoons.",
        "The {place} library was designed by the architect {v}.",
        "Which architect designed the library where {p} studies?",
        ["Linden", "Foxglove", "Bramble", "Ashgrove", "Thistle"],
        ["Clara Voss", "Anton Reyes", "Mina Sato", "Felix Drury", "Odile Marchal"],
    ),
]


def bridge_qa_items(n: int, seed: int = 0, doc_chars: int = 1000) -> list[PromptItem]:
    """Two-hop QA over three excerpts: one says where the person is, another what that place
    has, the third the same about a decoy place. Which documents hold the hops is in the id."""
    rng = random.Random(f"bridge_qa-{seed}")
    items = []
    for i in range(n):
        where, what, question, places, values = rng.choice(_BRIDGES)
        p = rng.choice(_PEOPLE_B)
        place, decoy_place = rng.sample(places, 2)
        v, decoy = rng.sample(values, 2)
        docs = _excerpts(rng, 3, doc_chars)
        slots = rng.sample(range(3), 3)
        docs[slots[0]] = _insert(docs[slots[0]], where.format(p=p, place=place), rng.random())
        docs[slots[1]] = _insert(docs[slots[1]], what.format(place=place, v=v), rng.random())
        docs[slots[2]] = _insert(
            docs[slots[2]], what.format(place=decoy_place, v=decoy), rng.random()
        )
        items.append(
            PromptItem(
                prompt=question.format(p=p) + " Answer in a few words.",
                documents=docs,
                reference=v,
                task="qa",
                id=f"bridge_qa-{i}-docs{slots[0] + 1},{slots[1] + 1}",
            )
        )
    return items
