"""Run the estimators for a set of policies and present the result: a JSON-able dict, a text
table for the terminal and the README, and a plot (estimate and interval per policy, the
logged policy's observed value as a reference line)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laser.server.ope.estimators import (
    MIN_ESS,
    bootstrap_means,
    estimate,
    fit_reward_model,
)
from laser.server.ope.logdata import LogData, LogError
from laser.server.ope.policies import Policy


def evaluate(
    log: LogData, policies: Sequence[Policy], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Every policy's IPS / SNIPS / DR estimate on `log`, with the log's own facts."""
    if log.n == 0:
        raise LogError("the log has no evaluable decisions")
    q = fit_reward_model(log.contexts, log.actions, log.rewards, len(log.arms), seed=seed)
    observed = bootstrap_means([log.rewards], n_boot, seed)
    logged_probs = None if np.isnan(log.logged_probs).any() else log.logged_probs
    results = []
    for policy in policies:
        pi = policy.probabilities(log)
        e = estimate(
            policy.name,
            pi,
            log.actions,
            log.propensity,
            log.rewards,
            q,
            logged_probs,
            n_boot=n_boot,
            seed=seed,
        )
        results.append({**e.to_json(), "kind": policy.kind})
    low, high = np.percentile(observed, [2.5, 97.5])
    return {
        "n": log.n,
        "excluded": log.excluded,
        "arms": log.arms,
        "logged_rm_counts": {a: int((log.actions == k).sum()) for k, a in enumerate(log.arms)},
        "min_propensity": float(log.propensity.min()),
        "observed": {
            "value": float(log.rewards.mean()),
            "low": float(low),
            "high": float(high),
        },
        "bootstrap": n_boot,
        "policies": results,
    }


def _num(e: dict[str, float], ok: bool) -> str:
    if not ok:
        return "n/a"
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table with the warnings under it."""
    obs = report["observed"]
    excluded = ", ".join(f"{v} {k}" for k, v in sorted(report["excluded"].items())) or "none"
    lines = [
        f"{report['n']} logged decisions drawn by the bandit, with feedback (left out: "
        f"{excluded}). Observed mean reward of the logged policy: {obs['value']:.3f} "
        f"[{obs['low']:.3f}, {obs['high']:.3f}]. Smallest logged propensity "
        f"{report['min_propensity']:.3f}. Intervals: 95% bootstrap over "
        f"{report['bootstrap']} resamples of the logged rows.",
        "",
        "| policy | DR | SNIPS | IPS | ESS | agrees with log | status |",
        "|---|---|---|---|---:|---:|---|",
    ]
    notes = []
    for p in report["policies"]:
        ok = p["status"] != "unsupported"
        lines.append(
            f"| {p['policy']} | {_num(p['dr'], ok)} | {_num(p['snips'], ok)} | "
            f"{_num(p['ips'], ok)} | {p['ess']:.0f} | {p['match']:.0%} | {p['status']} |"
        )
        notes += [f"- {p['policy']}: {w}" for w in p["warnings"]]
    if notes:
        lines += ["", *notes]
    lines += [
        "",
        f"Status: `ok`; `weak` (effective sample size under 5% of the rows); `partial` (the "
        f"policy often picks RMs the log could not); `unsupported` (ESS < {MIN_ESS:.0f}: no "
        "number is given).",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path, truth: dict[str, float] | None = None) -> None:
    """DR estimate and interval per policy (IPS, SNIPS as small marks), the observed value of
    the logged policy as a dashed line, and the true value when known (validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [p for p in report["policies"] if p["status"] != "unsupported"]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.6))
    for y, p in enumerate(rows):
        dr = p["dr"]
        ax.errorbar(
            dr["value"],
            y,
            xerr=[[dr["value"] - dr["low"]], [dr["high"] - dr["value"]]],
            fmt="o",
            color="C0",
            capsize=3,
            label="DR (95% CI)" if y == 0 else None,
        )
        ax.plot(p["ips"]["value"], y + 0.18, "x", color="C1", label="IPS" if y == 0 else None)
        ax.plot(p["snips"]["value"], y - 0.18, "+", color="C2", label="SNIPS" if y == 0 else None)
        if truth is not None and p["policy"] in truth:
            ax.plot(truth[p["policy"]], y, "D", mfc="none", color="k", ms=8,
                    label="truth" if y == 0 else None)  # fmt: skip
    ax.axvline(report["observed"]["value"], ls="--", color="gray", label="logged (observed)")
    ax.set_yticks(range(len(rows)), [p["policy"] for p in rows])
    ax.invert_yaxis()
    ax.set_xlabel("expected reward on the logged traffic")
    ax.set_title(f"Off-policy estimates, {report['n']} logged decisions")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
