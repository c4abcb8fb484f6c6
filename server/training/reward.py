"""The bandit's reward in training: how good was the RM a step used?

Two rules (`TrainConfig.bandit_reward`):

- `baseline` (default): the advantage of the step's loss over a running baseline that all
  RMs share, `advantage = baseline - loss`, where the baseline is an exponential moving
  average of the previous steps' losses, whatever RM each used (weight `baseline_weight` on
  the newest; taken BEFORE this step's loss joins it). The advantage is squashed to [0, 1]
  by the 20th/80th percentiles of the advantages of the last 20 steps (0 below q20, 1 above
  q80, linear between). The first step, which has no baseline, earns 0.5 and adds nothing
  to the history. The baseline restarts at each iteration's start: re-syncing the DPO
  reference to the policy resets the DPO term to log 2, so the loss jumps up, and that jump
  is no RM's doing. Why it is fair: as training proceeds the loss falls; the moving average
  lags behind it by the same amount for every RM, so the advantages stay centred on that
  lag and their percentiles keep it at about 0.5. An RM earns more only when its steps come
  out lower than the trend, and an RM that happens to go first gets no head start. (As the
  fall slows the lag shrinks and the advantages drift down with it; the 20-step window
  follows them.)
- `squashed_loss`: the paper's, `-loss` squashed by the 20th/80th percentiles of past
  rewards. While the loss falls, every newer step's `-loss` is among the highest seen, so
  whichever RM is chosen keeps earning about 1: LASeR locks onto the RM it tried first.

In `per_query` mode each prompt's RM is rewarded with the loss of that prompt's own pairs,
against the same shared baseline, which then takes in the step's loss over all its pairs.

The state (baseline, weight, history) is saved in the checkpoint's `squash.npz` in the
laser.bandit format (no pickle), so `--resume` continues exactly.

    >>> reward = BanditReward("baseline", baseline_weight=0.5)
    >>> reward.rewards([2.0], 2.0), reward.baseline
    ([0.5], 2.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from laser.bandit import BaselineAdvantage, PercentileSquash

ADVANTAGE_WINDOW_STEPS = 20
"""`baseline`: the squash's percentiles are those of the last this-many steps' advantages."""

KINDS = {"baseline": "baseline_advantage", "squashed_loss": "percentile_squash"}
"""`bandit_reward` -> the laser.bandit state kind its state is saved as."""


class BanditReward:
    """One of the two rules above, with `rewards`, `restart` and laser.bandit state."""

    def __init__(self, rule: str, baseline_weight: float = 0.3, per_step: int = 1) -> None:
        """`per_step`: decisions rewarded per step (the batch size in per-query mode), so
        that the advantage window spans `ADVANTAGE_WINDOW_STEPS` steps."""
        if rule not in KINDS:
            raise ValueError(f"bandit_reward must be one of {sorted(KINDS)}, got {rule!r}")
        self.rule = rule
        self.state: BaselineAdvantage | PercentileSquash = (
            BaselineAdvantage(baseline_weight, window=ADVANTAGE_WINDOW_STEPS * max(1, per_step))
            if rule == "baseline"
            else PercentileSquash()
        )

    @property
    def baseline(self) -> float | None:
        """The shared baseline the next step is compared with (None: no baseline rule, or
        none yet)."""
        return self.state.baseline if isinstance(self.state, BaselineAdvantage) else None

    def rewards(self, losses: Sequence[float], step_loss: float) -> list[float]:
        """Rewards in [0, 1] for this step's decisions (one loss each), in order."""
        if isinstance(self.state, BaselineAdvantage):
            out: list[float] = self.state.rewards(losses, step_loss)
            return out
        return [float(self.state(-float(v))) for v in losses]

    def restart(self) -> None:
        """At an iteration's start: the loss jumps (new reference), the baseline restarts."""
        if isinstance(self.state, BaselineAdvantage):
            self.state.restart()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self.state.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kind = state["meta"].get("kind")
        if kind != KINDS[self.rule]:
            saved = {v: k for k, v in KINDS.items()}.get(kind, kind)
            raise ValueError(
                f"the checkpoint's bandit reward is {saved!r}, this run's is {self.rule!r}: "
                f"resume with bandit_reward = {saved!r}"
            )
        self.state.load_state_dict(state)
