"""The bandit's reward in training: how good was the RM a step used?

Three rules (`TrainConfig.bandit_reward`); `probe`, label-free and the one that judges an RM
by what its pairs teach, is `laser.server.training.probe`'s. The two loss-based ones:

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

`reward_batch` and `reward_per_query` update the selector with these rewards. An RM that gave
no pair although the candidates differed could not rank them: it earns the lowest reward, 0
(left unrewarded, the warm start would keep choosing it). Where every candidate was the same
text no RM could have done better: no reward.

The state (baseline, weight, history) is saved in the checkpoint's `squash.npz` in the
laser.bandit format (no pickle), so `--resume` continues exactly.

    >>> reward = BanditReward("baseline", baseline_weight=0.5)
    >>> reward.rewards([2.0], 2.0), reward.baseline
    ([0.5], 2.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from laser.bandit import BaselineAdvantage, PercentileSquash, Selector
from laser.server.training.probe import ProbeReward

if TYPE_CHECKING:
    import torch

    from laser.server.training.dpo import Pair

ADVANTAGE_WINDOW_STEPS = 20
"""`baseline`: the squash's percentiles are those of the last this-many steps' advantages."""

KINDS = {
    "baseline": "baseline_advantage",
    "squashed_loss": "percentile_squash",
    "probe": "probe_margin",
}
"""`bandit_reward` -> the laser.bandit state kind its state is saved as."""


class BanditReward:
    """One of the two rules above, with `rewards`, `restart` and laser.bandit state."""

    def __init__(self, rule: str, baseline_weight: float = 0.3, per_step: int = 1) -> None:
        """`per_step`: decisions rewarded per step (the batch size in per-query mode), so
        that the advantage window spans `ADVANTAGE_WINDOW_STEPS` steps."""
        if rule not in KINDS:
            raise ValueError(f"bandit_reward must be one of {sorted(KINDS)}, got {rule!r}")
        self.rule = rule
        self.state: BaselineAdvantage | PercentileSquash | ProbeReward
        if rule == "baseline":
            window = ADVANTAGE_WINDOW_STEPS * max(1, per_step)
            self.state = BaselineAdvantage(baseline_weight, window=window)
        elif rule == "probe":
            self.state = ProbeReward()  # `probe_reward`, not `rewards` (laser...probe)
        else:
            self.state = PercentileSquash()

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
        if isinstance(self.state, ProbeReward):
            raise TypeError("the probe reward is computed from margins: use probe_reward")
        return [float(self.state(-float(v))) for v in losses]

    def probe_rewards(self, kinds: Sequence[str], margins: dict[str, float]) -> dict[str, float]:
        """`probe`: the rewards, per kind of query in `kinds`, of the step after which the
        probe margins are `margins` (laser.server.training.probe.ProbeReward)."""
        assert isinstance(self.state, ProbeReward)
        return self.state.rewards(kinds, margins)

    @property
    def has_margins(self) -> bool:
        """`probe`: whether the probe's margins were measured (starting margins known)."""
        return isinstance(self.state, ProbeReward) and bool(self.state.last)

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


def reward_batch(
    selector: Selector,
    reward: BanditReward,
    arm: str,
    x: npt.NDArray[np.float64],
    loss: float | None,
    rankable: bool,
) -> float | None:
    """`batch` mode: the batch's RM `arm`, chosen for context `x`, is rewarded for the step's
    `loss` (None: no pairs; then 0 if some prompt's candidates differed, `rankable`, and no
    reward otherwise). Returns the reward, None without one."""
    if loss is None:
        if not rankable:
            return None
        selector.update(arm, x, 0.0)
        return 0.0
    (r,) = reward.rewards([loss], loss)
    selector.update(arm, x, r)
    return r


def reward_per_query(
    selector: Selector,
    reward: BanditReward,
    contexts: npt.NDArray[np.float64],
    batch: list[int],
    arms: list[str],
    pairs: list[Pair],
    per_pair: torch.Tensor | None,
    loss: float | None,
    rankable: set[int],
) -> float | None:
    """`per_query` mode: the RM `arms[j]` chosen for prompt `batch[j]` (context
    `contexts[batch[j]]`) is rewarded with the mean loss (`per_pair`) of that prompt's own
    pairs, against the step's `loss`; without pairs it earns 0 if the prompt's candidates
    differed (it is in `rankable`), no reward otherwise. Returns the mean reward, None
    without one."""
    rewarded, tied = [], []
    for i, arm in zip(batch, arms, strict=True):
        mine = [k for k, p in enumerate(pairs) if p.item == i]
        if mine:
            assert per_pair is not None  # pairs come with their losses
            rewarded.append((i, arm, float(per_pair[mine].mean())))
        elif i in rankable:
            tied.append((i, arm))
    for i, arm in tied:
        selector.update(arm, contexts[i], 0.0)
    if not rewarded or loss is None:
        return 0.0 if tied else None
    rewards = reward.rewards([v for _, _, v in rewarded], loss)
    for (i, arm, _), r in zip(rewarded, rewards, strict=True):
        selector.update(arm, contexts[i], r)
    return float(np.mean([*rewards, *[0.0] * len(tied)]))
