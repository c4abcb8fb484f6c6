"""Exceptions raised by `laser.bandit`.

BanditError (ValueError)
 ├── InvalidInputError   wrong context dimension, NaN/inf in a context or reward
 ├── UnknownArmError     an arm name that was never added
 ├── NoArmsError         select() with every arm disabled (or none added)
 └── StateError          a state file of another format/version, or a corrupt one
"""

from __future__ import annotations


class BanditError(ValueError):
    """Base class of every error raised by `laser.bandit`."""


class InvalidInputError(BanditError):
    """A context or reward the bandit cannot use."""


class UnknownArmError(BanditError):
    """An arm name the selector does not know."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown arm {name!r}; known arms: {', '.join(known) or '(none)'}")
        self.name = name


class NoArmsError(BanditError):
    """Nothing to select from: no arm added, or every arm disabled."""


class StateError(BanditError):
    """A saved state that cannot be loaded (another version, another kind, corrupt)."""
