"""The names the report gives the strategies, and the order its tables and plots list them in.

>>> label("rm:loglik"), ordered(["oracle", "rm:a", "laser"])
('single RM: loglik', ['laser', 'rm:a', 'oracle'])
"""

from __future__ import annotations

from collections.abc import Sequence

# Row order of the tables: the contenders, then the references that know the answers.
REFERENCE_ROWS = ("oracle_rm_task", "oracle_rm_query", "oracle")
LABELS = {
    "laser": "LASeR (LinUCB, frozen after the stream)",
    "random_rm": "random RM (expected)",
    "ensemble_mean": "score ensemble (mean)",
    "ensemble_vote": "agreement ensemble (vote)",
    "first_sample": "no reranking (first sample)",
    "greedy": "greedy decoding",
    "oracle_rm_task": "best RM per task (chosen on the stream)",
    "oracle_rm_query": "best RM per query (hindsight)",
    "oracle": "oracle (any correct candidate)",
}


def label(name: str, chosen: dict[str, str] | None = None) -> str:
    if name == "best_single":
        rm = (chosen or {}).get("best_single_rm", "?")
        return f"best single RM (chosen on the stream: {rm})"
    if name.startswith("rm:"):
        return f"single RM: {name[3:]}"
    return LABELS.get(name, name)


def ordered(names: Sequence[str]) -> list[str]:
    head = ["laser", "best_single", "random_rm"]
    singles = sorted(n for n in names if n.startswith("rm:"))
    tail = ["ensemble_mean", "ensemble_vote", "first_sample", "greedy"]
    rest = [n for n in names if n not in head + singles + tail + list(REFERENCE_ROWS)]
    order = [*head, *tail, *singles, *rest, *REFERENCE_ROWS]
    return [n for n in order if n in names]
