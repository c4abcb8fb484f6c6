"""Disjoint LinUCB (Li et al. 2010), as LASeR uses it to pick a reward model per query.

Per arm k: `A_k = lambda*I`, `b_k = 0`. Select `argmax_k theta_k.x + alpha*sqrt(x' A_k^-1 x)`
with `theta_k = A_k^-1 b_k`; update the chosen arm with `A_k += x x'`, `b_k += r x`.
`A_k^-1` is kept current with the Sherman-Morrison identity (one rank-1 update per step,
never an inversion) and `theta_k` with the matching recursive-least-squares step.

Thompson sampling (`policy = "thompson"`): instead of the UCB bonus, each arm's score is a
draw from its Gaussian posterior at `x`, `theta_k.x + alpha*sqrt(x' A_k^-1 x)*z` with
`z ~ N(0, 1)` (the same as drawing `theta_k ~ N(theta_k, alpha^2 A_k^-1)` and taking
`theta_k.x`); the propensities it logs are estimated from `ts_draws` more draws.

Priors (`add_prior`): a prior belief "arm k earns about m on contexts like x, worth s
observations" enters as one weighted pseudo-observation, `A_k += s x x'`, `b_k += s m x`, so
it is saved, restored and shared like any update, and real feedback moves the estimate away
from it at the usual rate. A prior of strength >= `warmup` in a region counts as that
region's warm start for the arm.

Warm start (`warmup`): until every enabled arm has been rewarded `warmup` times in the
query's context region, the choice is uniform among the least-tried arms of that region, so
every RM is seen on every kind of query before UCB trusts its estimates. A region is the
largest of the first `regions` context features (a one-hot "kind of query" block); with
`regions = 0` the whole context space is one region. Without it, an arm that earns a
positive reward first keeps winning while the others sit at their prior of 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from laser.bandit.base import ArmSet, FloatArray, Selection, check_reward
from laser.bandit.errors import InvalidInputError


def _same(a: FloatArray, b: FloatArray | None) -> bool:
    return b is not None and bool(np.array_equal(a, b))


# UCB scores closer than this (relative) are a tie, broken by the seeded generator.
_TIE_RTOL = 1e-12


@dataclass(frozen=True)
class LinUCBConfig:
    """LinUCB's settings. Invalid values raise `ValueError` at construction.

    >>> LinUCBConfig(dim=64, alpha=0.1).ridge
    1.0
    """

    dim: int
    """Context dimension d (after any projection the featurizer does)."""
    alpha: float = 0.1
    """Width of the confidence bonus; the LASeR reference code uses 0.1."""
    ridge: float = 1.0
    """lambda in A_k = lambda*I: the prior's strength."""
    epsilon: float = 0.0
    """With this probability pick an enabled arm uniformly at random instead of the UCB
    argmax, so every arm keeps a non-zero propensity (for off-policy evaluation)."""
    seed: int = 0
    """Seeds tie-breaking and epsilon exploration."""
    warmup: int = 0
    """Rewarded tries each enabled arm gets per context region before UCB takes over
    (0: none, plain LinUCB)."""
    regions: int = 0
    """The first `regions` context features are a one-hot region indicator (the largest one
    names the region) that `warmup` counts by; 0: a single region."""
    policy: str = "ucb"
    """`ucb` (LinUCB: mean + alpha * width) or `thompson` (a posterior draw per arm)."""
    ts_draws: int = 256
    """Thompson sampling: draws per selection that estimate the logged propensities."""
    dtype: str = "float64"
    """Precision of the K stacked `A^-1` matrices: `float64` (exact to rounding over
    millions of updates) or `float32` (half the memory traffic, about 2x faster at large d;
    the selections agree with float64 except on near-ties, see the README)."""

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be finite and >= 0, got {self.alpha!r}")
        if not (math.isfinite(self.ridge) and self.ridge > 0):
            raise ValueError(f"ridge (lambda) must be finite and > 0, got {self.ridge!r}")
        if not (0.0 <= self.epsilon <= 1.0):
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon!r}")
        for name in ("warmup", "regions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        if self.policy not in ("ucb", "thompson"):
            raise ValueError(f"policy must be 'ucb' or 'thompson', got {self.policy!r}")
        if not isinstance(self.ts_draws, int) or self.ts_draws < 1:
            raise ValueError(f"ts_draws must be an integer >= 1, got {self.ts_draws!r}")
        if self.regions > self.dim:
            raise ValueError(f"regions ({self.regions}) cannot exceed dim ({self.dim})")


class LinUCB(ArmSet):
    """Disjoint LinUCB over named arms.

    >>> bandit = LinUCB(LinUCBConfig(dim=2), ["a", "b"])
    >>> x = np.array([1.0, 0.0])
    >>> bandit.update("b", x, 1.0)
    >>> bandit.select(x).arm
    'b'
    """

    kind = "linucb"

    def __init__(self, config: LinUCBConfig, arms: Iterable[str] = ()) -> None:
        self.config = config
        d = config.dim
        # A^-1 in the configured precision (npt.NDArray[Any]: float64 or float32); b and
        # theta, d numbers per arm, stay float64.
        self._a_inv: npt.NDArray[Any] = np.zeros((0, d, d), dtype=config.dtype)
        self._b: FloatArray = np.zeros((0, d))
        self._theta: FloatArray = np.zeros((0, d))
        # Rewarded tries per (arm, region), for the warm start.
        self._region_pulls: npt.NDArray[np.int64] = np.zeros(
            (0, max(1, config.regions)), dtype=np.int64
        )
        self._rng = np.random.default_rng(config.seed)
        # The priors folded in so far: arm -> {region: (mean, strength)} (saved with the state).
        self.priors: dict[str, dict[int, tuple[float, float]]] = {}
        # A^-1 x per enabled arm from the last select(), reused when update() gets the same x.
        self._last_x: FloatArray | None = None
        self._last_v: dict[int, npt.NDArray[Any]] = {}
        self._scratch: npt.NDArray[Any] = np.empty((d, d), dtype=config.dtype)
        super().__init__(())
        self.add_arms(arms)

    # -- arms -------------------------------------------------------------------------------
    def add_arm(self, name: str) -> None:
        """Add an arm while running; it starts from the prior (A = lambda*I, b = 0)."""
        self.add_arms([name])

    def add_arms(self, names: Iterable[str]) -> None:
        names = list(names)
        for name in names:
            self._register(name)
        k, d = len(self._names), self.config.dim
        a_inv = np.empty((k, d, d), dtype=self.config.dtype)
        a_inv[: len(self._a_inv)] = self._a_inv
        a_inv[len(self._a_inv) :] = np.eye(d) / self.config.ridge
        self._a_inv = a_inv
        self._b = np.concatenate([self._b, np.zeros((len(names), d))])
        self._theta = np.concatenate([self._theta, np.zeros((len(names), d))])
        self._region_pulls = np.concatenate(
            [self._region_pulls, np.zeros((len(names), self._region_pulls.shape[1]), np.int64)]
        )
        self._last_x = None

    # -- the algorithm ----------------------------------------------------------------------
    def _context(self, x: npt.ArrayLike) -> FloatArray:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"context must be numeric: {exc}") from exc
        if arr.shape != (self.config.dim,):
            raise InvalidInputError(
                f"context must have shape ({self.config.dim},), got {arr.shape}"
            )
        if not math.isfinite(float(arr @ arr)):  # one pass; NaN/inf anywhere poisons it
            raise InvalidInputError("context contains NaN or inf (or is too large)")
        return arr

    def region(self, x: npt.ArrayLike) -> int:
        """The warm-up region of context `x`: the index of the largest of its first `regions`
        features (0 when `regions` is 0)."""
        return self._region(self._context(x))

    def _region(self, ctx: FloatArray) -> int:
        r = self.config.regions
        return int(np.argmax(ctx[:r])) if r else 0

    def _low(self, ctx: FloatArray) -> npt.NDArray[Any]:
        """`ctx` in A^-1's precision: a float64 vector times a float32 stack would make numpy
        upcast the whole stack on every product."""
        return ctx if self._a_inv.dtype == ctx.dtype else ctx.astype(self._a_inv.dtype)

    def select(self, x: npt.ArrayLike, among: Iterable[str] | None = None) -> Selection:
        """Pick an enabled arm for context `x` (shape `(dim,)`).

        `among` restricts the choice to these enabled arms (e.g. those whose RM is healthy);
        propensities are then over that subset. An empty or all-unknown subset raises
        `NoArmsError`.
        """
        ctx = self._context(x)
        idx = self._enabled_indices(among)
        low = self._low(ctx)
        if len(idx) == len(self._names):  # the common case: no copy of the (K, d, d) stack
            v = self._a_inv @ low  # (K, d): A_k^-1 x
            means = self._theta @ ctx
        else:
            v = self._a_inv[idx] @ low
            means = self._theta[idx] @ ctx
        widths = np.sqrt(np.maximum(v @ low, 0.0)).astype(np.float64)
        ucb = (means + self.config.alpha * widths).tolist()
        self._last_x = ctx.copy()  # the caller may reuse its array before update()
        self._last_v = dict(zip(idx, v, strict=True))

        warm = self._warming(ctx, idx)
        if warm:
            # Warm start: uniform among the arms least tried in this region.
            pick = warm[int(self._rng.integers(len(warm)))] if len(warm) > 1 else warm[0]
            explored = True
            probs = [1.0 / len(warm) if j in warm else 0.0 for j in range(len(idx))]
        elif self.config.policy == "thompson":
            pick, probs, explored = self._thompson(means, widths)
        else:
            best = max(ucb)
            floor = best - _TIE_RTOL * max(1.0, abs(best))
            ties = [j for j, u in enumerate(ucb) if u >= floor]
            eps = self.config.epsilon
            explored = eps > 0 and float(self._rng.random()) < eps
            if explored:
                pick = int(self._rng.integers(len(idx)))
            else:
                pick = ties[0] if len(ties) == 1 else ties[int(self._rng.integers(len(ties)))]
            probs = [
                eps / len(idx) + ((1 - eps) / len(ties) if j in ties else 0.0)
                for j in range(len(idx))
            ]
        propensity = probs[pick]
        names = [self._names[i] for i in idx]
        return Selection(
            arm=names[pick],
            index=idx[pick],
            score=ucb[pick],
            propensity=propensity,
            expectations=dict(zip(names, means.tolist(), strict=True)),
            widths=dict(zip(names, widths.tolist(), strict=True)),
            explored=explored,
            probabilities=dict(zip(names, probs, strict=True)),
        )

    def _thompson(self, means: FloatArray, widths: FloatArray) -> tuple[int, list[float], bool]:
        """One posterior draw per arm picks (epsilon aside); `ts_draws` further draws, with
        the one that picked, estimate each arm's chance of winning."""
        k, eps = len(means), self.config.epsilon
        draws = means + self.config.alpha * widths * self._rng.standard_normal(
            (self.config.ts_draws + 1, k)
        )
        wins = np.bincount(np.argmax(draws, axis=1), minlength=k) / len(draws)
        explored = eps > 0 and float(self._rng.random()) < eps
        pick = int(self._rng.integers(k)) if explored else int(np.argmax(draws[0]))
        return pick, [eps / k + (1 - eps) * float(w) for w in wins], explored

    def _warming(self, ctx: FloatArray, idx: list[int]) -> list[int]:
        """Positions in `idx` of the least-tried arms of `ctx`'s region while any enabled arm
        there has fewer than `warmup` rewarded tries; empty once the region is warm."""
        if self.config.warmup == 0:
            return []
        counts = self._region_pulls[idx, self._region(ctx)]
        low = int(counts.min())
        if low >= self.config.warmup:
            return []
        return [j for j, c in enumerate(counts.tolist()) if c == low]

    def update(self, arm: str, x: npt.ArrayLike, reward: float) -> None:
        """Credit `reward` to `arm` for context `x`: A += x x', b += r x (disabled arms too)."""
        k = self.index(arm)
        r = check_reward(reward)
        ctx = self._context(x)
        self._fold(k, ctx, r, 1.0)
        self._region_pulls[k, self._region(ctx)] += 1
        self._record(k, r)

    def add_prior(self, arm: str, x: npt.ArrayLike, mean: float, strength: float) -> None:
        """Believe that `arm` earns about `mean` on contexts like `x`, as much as `strength`
        rewarded observations would say: one weighted pseudo-observation (A += s x x',
        b += s m x). It is not counted as feedback (`pulls`); a strength of at least `warmup`
        counts as the warm start of `x`'s region for this arm."""
        k = self.index(arm)
        m = check_reward(mean)
        s = check_reward(strength)
        if s <= 0:
            raise InvalidInputError(f"prior strength must be > 0, got {s}")
        ctx = self._context(x)
        self._fold(k, ctx, m, s)
        region = self._region(ctx)
        self._region_pulls[k, region] += int(s)
        self.priors.setdefault(arm, {})[region] = (m, s)

    def _fold(self, k: int, ctx: FloatArray, r: float, w: float) -> None:
        """A += w x x', b += w r x, keeping A^-1 and theta current."""
        low = self._low(ctx)
        u = self._last_v.get(k) if _same(ctx, self._last_x) else None
        if u is None:
            u = self._a_inv[k] @ low
        den = 1.0 + w * float(low @ u)
        # Sherman-Morrison: (A + w x x')^-1 = A^-1 - w (A^-1 x)(A^-1 x)' / (1 + w x' A^-1 x).
        # The outer product goes through a reused buffer: at d=384 a fresh 1 MiB temporary
        # per update costs more than the arithmetic.
        np.dot((u * (w / den))[:, None], u[None, :], out=self._scratch)
        self._a_inv[k] -= self._scratch
        # Weighted recursive least squares: theta += w u (r - x.theta) / den.
        self._theta[k] += u * (w * (r - float(ctx @ self._theta[k])) / den)
        self._b[k] += w * r * ctx
        self._last_v.pop(k, None)  # only this arm's A^-1 changed

    # -- inspection -------------------------------------------------------------------------
    def predict(self, x: npt.ArrayLike) -> dict[str, dict[str, float]]:
        """Each enabled arm's expectation, width and UCB for `x`; no draw, no side effect."""
        ctx = self._context(x)
        low = self._low(ctx)
        out = {}
        for name in self.enabled_arms:
            k = self._index[name]
            mean = float(self._theta[k] @ ctx)
            width = math.sqrt(max(float(low @ self._a_inv[k] @ low), 0.0))
            out[name] = {
                "expectation": mean,
                "width": width,
                "ucb": mean + self.config.alpha * width,
            }
        return out

    def a_inverse(self, arm: str) -> FloatArray:
        """A copy of the arm's current A^-1, in float64 whatever the stored precision."""
        return np.array(self._a_inv[self.index(arm)], dtype=np.float64)

    def theta(self, arm: str) -> FloatArray:
        return np.array(self._theta[self.index(arm)])

    def b(self, arm: str) -> FloatArray:
        return np.array(self._b[self.index(arm)])

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to predict identically: JSON-able `meta` plus numpy `arrays`."""
        meta = {"kind": self.kind, "config": asdict(self.config), **self._arms_meta()}
        meta["rng"] = self._rng.bit_generator.state
        meta["priors"] = {
            arm: {str(r): list(v) for r, v in by_region.items()}
            for arm, by_region in self.priors.items()
        }
        arrays = {
            "a_inv": self._a_inv.copy(),
            "b": self._b.copy(),
            "theta": self._theta.copy(),
            "region_pulls": self._region_pulls.copy(),
        }
        return {"meta": meta, "arrays": arrays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta, arrays = state["meta"], state["arrays"]
        config = LinUCBConfig(**meta["config"])
        k, d = len(meta["arms"]), config.dim
        shapes = {"a_inv": (k, d, d), "b": (k, d), "theta": (k, d)}
        for name, shape in shapes.items():
            if np.shape(arrays[name]) != shape:
                raise ValueError(f"{name} has shape {np.shape(arrays[name])}, expected {shape}")
        self.config = config
        self._load_arms_meta(meta)
        self._a_inv = np.array(arrays["a_inv"], dtype=config.dtype)
        self._b = np.array(arrays["b"], dtype=np.float64)
        self._theta = np.array(arrays["theta"], dtype=np.float64)
        regions = max(1, config.regions)
        if "region_pulls" in arrays:  # absent in states saved before the warm start existed
            pulls = np.array(arrays["region_pulls"], dtype=np.int64)
            if pulls.shape != (k, regions):
                raise ValueError(f"region_pulls has shape {pulls.shape}, expected {(k, regions)}")
        else:
            pulls = np.full((k, regions), config.warmup, dtype=np.int64)
        self._region_pulls = pulls
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = meta["rng"]
        self.priors = {
            arm: {int(r): (float(v[0]), float(v[1])) for r, v in by_region.items()}
            for arm, by_region in meta.get("priors", {}).items()
        }
        self._scratch = np.empty((config.dim, config.dim), dtype=config.dtype)
        self._last_x = None
        self._last_v = {}
