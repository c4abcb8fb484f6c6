"""The serving bandit's durability: restored at start from the newest snapshot in the store
plus every feedback logged after it, so a restarted (even SIGKILLed) server predicts exactly
as before. Snapshots themselves are written by the reranker (`Reranker.snapshot`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from laser.bandit import LinUCB, LinUCBConfig, StateError, from_bytes
from laser.server.observe import credits
from laser.server.store.base import LogStore

log = logging.getLogger("laser.server")


def restore_bandit(
    store: LogStore,
    config: LinUCBConfig,
    arms: Iterable[str],
    abstain_reward: float = 0.0,
    prepare: Callable[[LinUCB], None] | None = None,
) -> tuple[LinUCB, int]:
    """The bandit to serve with, and the sequence number of the last feedback applied.

    The newest snapshot is used when its context (dimension, regions) still fits `config`;
    what it learnt is kept, while alpha, epsilon and warm-up come from `config`, so an
    operator's change takes effect on restart. RMs configured now become arms (new ones from
    the prior); arms no longer configured stay known but disabled. Feedback logged after the
    snapshot is then replayed (feedback whose context no longer fits is skipped), each with
    the updates it made when it came (`observe.credits`). `prepare` (folding in priors) runs
    on the bandit before the replay, fresh or restored.
    """
    arms = list(arms)
    bandit, after = LinUCB(config, arms), 0
    snap = store.latest_snapshot()
    if snap is not None:
        seq, blob = snap
        try:
            state = from_bytes(blob)
            saved = state["meta"]["config"]
            if (saved["dim"], saved.get("regions", 0)) != (config.dim, config.regions):
                raise StateError("the context changed (dimension or regions)")
            # The configured precision wins over the saved one (arrays are converted).
            saved = {**saved, "dtype": config.dtype}
            restored = LinUCB(LinUCBConfig(**saved))
            restored.load_state_dict({**state, "meta": {**state["meta"], "config": saved}})
            restored.config = config
            bandit, after = restored, seq
        except (StateError, KeyError, TypeError, ValueError) as exc:
            log.warning("bandit snapshot unusable (%s): replaying all feedback", exc)
    for name in arms:  # RMs added to the config since the snapshot
        if name not in bandit.arms:
            bandit.add_arm(name)
    for name in bandit.arms:  # RMs no longer configured stay known but unused
        if name not in arms:
            bandit.disable_arm(name)
    if prepare is not None:
        prepare(bandit)
    replayed, last = 0, after
    for row in store.feedback_after(after):
        if row.teaches and row.arm in bandit.arms and row.context.shape == (config.dim,):
            for name, r in credits(row.arm, row.reward, row.observed, abstain_reward):
                if name in bandit.arms:
                    bandit.update(name, row.context, r)
            replayed += 1
        last = row.seq
    if snap is not None or replayed:
        log.info("bandit restored: snapshot at feedback %d, %d replayed", after, replayed)
    return bandit, max(last, after)
