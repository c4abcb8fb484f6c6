"""laser.bandit: choose one arm (reward model) per context. numpy only.

>>> import numpy as np
>>> from laser.bandit import LinUCB, LinUCBConfig
>>> bandit = LinUCB(LinUCBConfig(dim=3, alpha=0.1), ["math_rm", "chat_rm"])
>>> choice = bandit.select(np.ones(3))
>>> bandit.update(choice.arm, np.ones(3), reward=1.0)
"""

from laser.bandit.base import ArmSet, Selection, Selector
from laser.bandit.baselines import FixedArm, RoundRobin, UniformRandom
from laser.bandit.errors import (
    BanditError,
    InvalidInputError,
    NoArmsError,
    StateError,
    UnknownArmError,
)
from laser.bandit.linucb import LinUCB, LinUCBConfig
from laser.bandit.normalize import BaselineAdvantage, PercentileSquash
from laser.bandit.state import (
    from_bytes,
    load_selector,
    load_squash,
    load_state,
    save_state,
    to_bytes,
)

__all__ = [
    "ArmSet",
    "BanditError",
    "BaselineAdvantage",
    "FixedArm",
    "InvalidInputError",
    "LinUCB",
    "LinUCBConfig",
    "NoArmsError",
    "PercentileSquash",
    "RoundRobin",
    "Selection",
    "Selector",
    "StateError",
    "UniformRandom",
    "UnknownArmError",
    "from_bytes",
    "load_selector",
    "load_squash",
    "load_state",
    "save_state",
    "to_bytes",
]
