"""Inverse propensity scoring (IPS), self-normalised IPS (SNIPS) and doubly robust (DR)
estimates of a policy's expected reward on logged traffic, with bootstrap intervals.

For row i of the log: context x_i, the RM a_i that scored, the logged policy's probability
p_i of it, the reward r_i; the target policy gives pi_i(a) for every RM a.

    IPS   = mean_i w_i r_i                         w_i = pi_i(a_i) / p_i
    SNIPS = sum_i w_i r_i / sum_i w_i
    DR    = mean_i [ sum_a pi_i(a) q(x_i, a) + w_i (r_i - q(x_i, a_i)) ]

q is a reward model of the log: a ridge regression of the reward on the context per RM,
cross-fitted (each row predicted by a model fitted on the other fold), so DR is unbiased when
either the propensities or q are right. The effective sample size (sum w)^2 / sum w^2 says how
many logged rows the estimate is really worth. Intervals: percentile bootstrap over rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FloatArray = np.ndarray

# Below these the estimate is not printed as a number (see `PolicyEstimate.status`).
MIN_ESS = 30.0
MAX_UNSUPPORTED = 0.10


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


@dataclass
class PolicyEstimate:
    policy: str
    n: int
    ips: Estimate
    snips: Estimate
    dr: Estimate
    ess: float
    """Effective sample size of the importance weights."""
    max_weight: float
    match: float
    """Mean probability the policy gives the logged RM: how often it agrees with the log."""
    unsupported: float | None
    """Mean probability the policy puts on RMs the logged policy could not choose (p = 0)
    for that row: choices no logged reward can speak for (None: the log has no distribution)."""
    status: str = "ok"
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fit_reward_model(
    contexts: FloatArray,
    actions: np.ndarray,
    rewards: FloatArray,
    n_arms: int,
    ridge: float = 1.0,
    folds: int = 2,
    seed: int = 0,
) -> FloatArray:
    """q(x_i, a) for every row and RM: per-RM ridge regression, cross-fitted over `folds`.

    An RM with no row in a training fold is predicted by that fold's mean reward.
    """
    n, d = contexts.shape
    fold = np.random.default_rng(seed).permutation(n) % max(1, folds)
    q = np.zeros((n, n_arms))
    lo, hi = (float(rewards.min()), float(rewards.max())) if n else (0.0, 1.0)
    for f in range(max(1, folds)):
        test = fold == f
        train = ~test if folds > 1 else test
        base = float(rewards[train].mean()) if train.any() else 0.0
        for k in range(n_arms):
            rows = train & (actions == k)
            if not rows.any():
                q[test, k] = base
                continue
            x, r = contexts[rows], rewards[rows]
            theta = np.linalg.solve(x.T @ x + ridge * np.eye(d), x.T @ r)
            q[test, k] = contexts[test] @ theta
    return np.clip(q, lo, hi)


def _interval(samples: FloatArray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_means(
    terms: list[FloatArray], n_boot: int, seed: int, ratio: bool = False
) -> FloatArray:
    """Bootstrap replicates of mean(terms[0]) (or sum(terms[0]) / sum(terms[1]) with `ratio`),
    resampling rows with replacement; in chunks so memory stays small on long logs."""
    n = terms[0].shape[0]
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_boot, 100):
        b = min(100, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        if ratio:
            num, den = terms[0][idx].sum(1), terms[1][idx].sum(1)
            out.append(np.divide(num, den, out=np.zeros_like(num), where=den > 0))
        else:
            out.append(terms[0][idx].mean(1))
    return np.concatenate(out)


def estimate(
    name: str,
    pi: FloatArray,
    actions: np.ndarray,
    propensity: FloatArray,
    rewards: FloatArray,
    q: FloatArray,
    logged_probs: FloatArray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> PolicyEstimate:
    """The three estimates of the policy whose per-row distribution over RMs is `pi` (n, K)."""
    n = len(rewards)
    rows = np.arange(n)
    w = pi[rows, actions] / propensity
    ips_t = w * rewards
    dr_t = (pi * q).sum(1) + w * (rewards - q[rows, actions])
    snips = float(ips_t.sum() / w.sum()) if w.sum() > 0 else 0.0
    ips_b = bootstrap_means([ips_t], n_boot, seed)
    snips_b = bootstrap_means([ips_t, w], n_boot, seed, ratio=True)
    dr_b = bootstrap_means([dr_t], n_boot, seed)
    ess = float(w.sum() ** 2 / (w**2).sum()) if (w**2).sum() > 0 else 0.0
    unsupported = None
    if logged_probs is not None and not np.isnan(logged_probs).any():
        unsupported = float((pi * (logged_probs <= 0)).sum(1).mean())
    out = PolicyEstimate(
        policy=name,
        n=n,
        ips=Estimate(float(ips_t.mean()), *_interval(ips_b)),
        snips=Estimate(snips, *_interval(snips_b)),
        dr=Estimate(float(dr_t.mean()), *_interval(dr_b)),
        ess=ess,
        max_weight=float(w.max()) if n else 0.0,
        match=float(pi[rows, actions].mean()) if n else 0.0,
        unsupported=unsupported,
    )
    judge_support(out)
    return out


def judge_support(e: PolicyEstimate) -> None:
    """Set `status` and `warnings`: say when the log cannot speak for the policy."""
    if e.ess < MIN_ESS:
        e.status = "unsupported"
        e.warnings.append(
            f"effective sample size {e.ess:.1f} < {MIN_ESS:.0f}: the log almost never made "
            "this policy's choices; no estimate is given. Log with more exploration (a higher "
            "bandit.epsilon) or longer"
        )
    if e.unsupported is not None and e.unsupported > MAX_UNSUPPORTED:
        if e.status == "ok":
            e.status = "partial"
        e.warnings.append(
            f"{e.unsupported:.0%} of the policy's choices are RMs the logged policy could not "
            "choose in those contexts (probability 0): IPS and SNIPS cannot see them, DR "
            "relies on its reward model there"
        )
    elif e.ess < 0.05 * e.n and e.status == "ok":
        e.status = "weak"
        e.warnings.append(
            f"effective sample size {e.ess:.0f} of {e.n} rows: wide intervals; IPS is noisy, "
            "prefer DR or SNIPS"
        )
