"""The estimators against the truth, on evaluation data where every RM's pick on every item
is known (`docs/eval/items.jsonl.gz` from `laser-server eval`: each item's candidates, their
graded quality, every RM's scores).

A LASeR serving run is simulated over those items in the server's log format: the served
LinUCB with its epsilon exploration picks an RM per query from the `kind` context, the reward
is the graded quality of that RM's pick (as feedback would report it), and some requests are
forced or fall back (logged and excluded, as in serving). Because every RM's pick is graded,
each candidate policy's TRUE value on the logged traffic is known exactly and the estimates
can be compared with it. Repeating with other seeds gives the intervals' coverage.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laser.bandit import LinUCB
from laser.server.config import BanditSettings
from laser.server.featurize import Featurizer
from laser.server.ope.logdata import LogData, LoggedDecision, build
from laser.server.ope.policies import Policy, default_policies, route
from laser.server.ope.report import evaluate

FloatArray = np.ndarray


def load_items(path: Path) -> tuple[list[dict[str, Any]], list[str], FloatArray]:
    """The items, their RMs, and the quality of each RM's pick per item (N, K); an RM's pick
    is its highest-scored candidate, the first on ties (as serving picks)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    rms = list(items[0]["candidates"][0]["scores"])
    quality = np.zeros((len(items), len(rms)))
    for i, item in enumerate(items):
        cands = item["candidates"]
        for k, rm in enumerate(rms):
            scores = [c["scores"][rm] for c in cands]
            quality[i, k] = cands[int(np.argmax(scores))]["quality"]
    return items, rms, quality


def _has_document(item: dict[str, Any]) -> bool:
    return item["task"] in ("longqa", "multidoc_qa")


def simulate_log(
    items: list[dict[str, Any]],
    rms: Sequence[str],
    quality: FloatArray,
    bandit: BanditSettings,
    passes: int = 3,
    forced_share: float = 0.05,
    seed: int = 0,
) -> tuple[list[LoggedDecision], np.ndarray]:
    """A serving log over `passes` shuffled passes of the items, and each row's item index."""
    rng = np.random.default_rng(seed)
    f = Featurizer(None, context="kind")
    x_all = f.features_batch(
        [it["prompt"] for it in items],
        [_has_document(it) for it in items],
        [it["task"] for it in items],
    )
    learner = LinUCB(bandit.linucb(f.dim, f.regions, seed=seed), rms)
    order = np.concatenate([rng.permutation(len(items)) for _ in range(passes)])
    rows = []
    for t, i in enumerate(order):
        x = x_all[i]
        sel = learner.select(x)
        arm, how = sel.arm, "bandit"
        if rng.random() < forced_share:  # a client forcing an RM: logged, not evaluable
            arm, how = str(rms[int(rng.integers(len(rms)))]), "forced"
        reward = float(quality[i, rms.index(arm)])
        rows.append(
            LoggedDecision(
                id=f"sim-{t}",
                created=float(t),
                prompt=items[i]["prompt"],
                task=items[i]["task"],
                has_document=_has_document(items[i]),
                arm=arm,
                propensity=sel.probabilities.get(arm, 0.0),
                selection=how,
                context=x,
                probabilities=sel.probabilities,
                scores=[],
                chosen=0,
                model="simulated",
                reward=reward,
            )
        )
        learner.update(arm, x, reward)
    return rows, order


def true_values(
    log: LogData, policies: Sequence[Policy], quality_rows: FloatArray
) -> dict[str, float]:
    """Each policy's exact expected reward on the logged rows: sum_a pi_i(a) quality_i(a)."""
    return {p.name: float((p.probabilities(log) * quality_rows).sum(1).mean()) for p in policies}


ROUTE = {"math": "arith", "qa": "grounding", "default": "loglik"}


def validation_policies(log: LogData, bandit: BanditSettings) -> list[Policy]:
    out = default_policies(log, bandit)
    if all(rm in log.arms for rm in ROUTE.values()):
        out.append(route("by-kind", ROUTE))
    return out


def run(
    items_path: Path,
    bandit: BanditSettings | None = None,
    seeds: int = 20,
    passes: int = 3,
    n_boot: int = 500,
) -> dict[str, Any]:
    """One full report (seed 0) with the truth beside it, and coverage over `seeds` logs."""
    bandit = bandit or BanditSettings(epsilon=0.1)
    items, rms, quality = load_items(items_path)
    first: dict[str, Any] = {}
    covered: dict[str, dict[str, int]] = {}
    errors: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        rows, order = simulate_log(items, rms, quality, bandit, passes=passes, seed=seed)
        log = build(rows, rms)
        kept = np.array([int(r.id.split("-")[1]) for r in log.rows])
        policies = validation_policies(log, bandit)
        truth = true_values(log, policies, quality[order[kept]])
        report = evaluate(log, policies, n_boot=n_boot, seed=seed)
        for p in report["policies"]:
            name = p["policy"]
            for est in ("ips", "snips", "dr"):
                e = p[est]
                hit = int(e["low"] <= truth[name] <= e["high"])
                covered.setdefault(name, {}).setdefault(est, 0)
                covered[name][est] += hit
                errors.setdefault(name, {}).setdefault(est, []).append(e["value"] - truth[name])
        if seed == 0:
            first = {**report, "truth": truth}
    first["validation"] = {
        "seeds": seeds,
        "passes": passes,
        "items": len(items),
        "bandit": bandit.model_dump(),
        "coverage": {n: {e: c / seeds for e, c in v.items()} for n, v in covered.items()},
        "mean_abs_error": {
            n: {e: float(np.mean(np.abs(errs))) for e, errs in v.items()} for n, v in errors.items()
        },
    }
    first["epsilon_tradeoff"] = epsilon_tradeoff(items_path, bandit, passes=passes)
    return first


def epsilon_tradeoff(
    items_path: Path,
    bandit: BanditSettings,
    epsilons: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.4),
    seeds: int = 5,
    passes: int = 3,
) -> list[dict[str, float]]:
    """What exploration costs and buys: per epsilon, the logged policy's true value (what
    users got), and for the single-RM policies the mean effective sample size and DR interval
    width (how well the log can judge them), averaged over `seeds` logs."""
    from laser.server.ope.estimators import estimate, fit_reward_model

    items, rms, quality = load_items(items_path)
    out = []
    for eps in epsilons:
        cfg = bandit.model_copy(update={"epsilon": eps})
        served, ess, width = [], [], []
        for seed in range(seeds):
            rows, order = simulate_log(
                items, rms, quality, cfg, passes, forced_share=0.0, seed=seed
            )
            log = build(rows, rms)
            q_true = quality[order]
            served.append(float((log.logged_probs * q_true).sum(1).mean()))
            q = fit_reward_model(log.contexts, log.actions, log.rewards, len(rms), seed=seed)
            for k in range(len(rms)):
                pi = np.zeros((log.n, len(rms)))
                pi[:, k] = 1.0
                e = estimate("rm", pi, log.actions, log.propensity, log.rewards, q, n_boot=200)
                ess.append(e.ess)
                width.append(e.dr.high - e.dr.low)
        out.append(
            {
                "epsilon": eps,
                "served_value": float(np.mean(served)),
                "single_rm_ess": float(np.mean(ess)),
                "single_rm_dr_width": float(np.mean(width)),
            }
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    v = report["validation"]
    lines = [
        f"Simulated serving log over {v['items']} evaluation items x {v['passes']} passes "
        f"(LinUCB alpha {v['bandit']['alpha']}, epsilon {v['bandit']['epsilon']}, warm-up "
        f"{v['bandit']['warmup']}; 5% of requests forced, excluded): {report['n']} evaluable "
        f"rows. Truth: each policy's exact expected reward on those rows. Coverage: share of "
        f"{v['seeds']} independent logs whose 95% interval holds the truth.",
        "",
        "| policy | truth | DR (seed 0) | SNIPS | IPS | ESS | coverage DR / SNIPS / IPS |",
        "|---|---:|---|---|---|---:|---|",
    ]
    for p in report["policies"]:
        name = p["policy"]
        cov = v["coverage"][name]

        def fmt(e: dict[str, float]) -> str:
            return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

        lines.append(
            f"| {name} | {report['truth'][name]:.3f} | {fmt(p['dr'])} | {fmt(p['snips'])} | "
            f"{fmt(p['ips'])} | {p['ess']:.0f} | {cov['dr']:.0%} / {cov['snips']:.0%} / "
            f"{cov['ips']:.0%} |"
        )
    trade = report.get("epsilon_tradeoff")
    if trade:
        lines += [
            "",
            "Exploration cost vs evaluability (same simulation, "
            f"{v['passes']} passes, mean of 5 logs per row; single-RM policies):",
            "",
            "| epsilon | value served (truth) | ESS of a single-RM policy | its DR 95% CI width |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {t['epsilon']:.2f} | {t['served_value']:.3f} | {t['single_rm_ess']:.0f} | "
            f"{t['single_rm_dr_width']:.3f} |"
            for t in trade
        ]
    return "\n".join(lines)
