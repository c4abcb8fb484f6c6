"""An ensemble of other RMs as one arm: where combining RMs is what works, the bandit can
learn to choose the combination.

Its score of a candidate is the mean over members of the member's score min-max normalised
over this request's candidates (a member that scores every candidate alike gives each 0.5:
it ranks nothing), the evaluation's score ensemble. Serving reuses the members' scores when
they were made for side observations, so the ensemble then costs nothing more.

>>> EnsembleRM("mix", {}).combine([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]])
[0.25, 0.75, 0.5]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from laser.server.rms.base import Query, RewardModel
from laser.server.rms.builtin import normalized_mean


class EnsembleRM:
    kind = "ensemble"

    def __init__(self, name: str, members: Mapping[str, RewardModel]) -> None:
        self.name = name
        self.members = tuple(members)
        self._models = dict(members)

    def combine(self, parts: Sequence[Sequence[float]]) -> list[float]:
        if not parts:
            raise ValueError(f"ensemble {self.name}: no member scored")
        return normalized_mean(parts)

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        return self.combine([await m.score(query, responses) for m in self._models.values()])
