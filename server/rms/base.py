"""The reward-model protocol: what an RM sees (`Query`), what it must do (`RewardModel`),
and the error that blames the input instead of the RM (`RMInputError`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from laser.server.prompts import format_documents


@dataclass(frozen=True)
class Query:
    """What an RM may look at besides the candidates."""

    question: str
    prompt: str
    documents: list[str] = field(default_factory=list)
    task: str | None = None
    reference: str | None = None

    @property
    def user_content(self) -> str:
        """The question, inside the documented document template when there are documents."""
        return format_documents(self.question, self.documents) if self.documents else self.question


class RMInputError(ValueError):
    """This RM cannot score this request's input (a built-in RM's error on the text, a
    remote RM's 400/413/422). The request falls back to the next RM; the RM's circuit is
    not touched, so crafted input cannot take an RM out for everyone."""


def input_safe(name: str, fn: Callable[..., list[float]], *args: Any) -> list[float]:
    """`fn(*args)` for a pure (text-only) RM: whatever it raises is the input's fault."""
    try:
        return fn(*args)
    except Exception as exc:
        raise RMInputError(f"RM {name} cannot score this input: {type(exc).__name__}") from exc


class RewardModel(Protocol):
    name: str
    kind: str

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]: ...
