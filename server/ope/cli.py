"""`laser-server ope`: what other RM-selection policies would have scored on logged traffic.

laser-server ope --data-dir laser-data               # the served log, the default policies
laser-server ope --log export.jsonl --alpha 0.1,1,4  # an exported log; other alphas
laser-server ope --data-dir d --policy route.toml    # your policy (a file; see policies.py)
laser-server ope --validate docs/eval/items.jsonl.gz --out docs/ope  # estimators vs truth
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from laser.server.runtime import log_to_stderr, offline_environment


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ope",
        help="off-policy evaluation: what another RM-selection policy would have scored",
        description=(
            "Read the decision log (decisions drawn by the bandit that received feedback) and "
            "estimate, for each candidate policy, its expected reward on the same traffic with "
            "IPS, self-normalised IPS and doubly robust estimators, each with a bootstrap 95% "
            "interval and the effective sample size. Forced and fallback decisions are counted "
            "and excluded. Candidates: the logged policy, each RM alone, uniform random, the "
            "served LinUCB replayed greedy and with other alphas, and --policy files."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", dest="data_dir", help="a server's data directory (laser.db)")
    src.add_argument("--log", help="a laser.db file or an exported JSONL (.jsonl / .jsonl.gz)")
    src.add_argument(
        "--validate",
        metavar="ITEMS",
        help="check the estimators against the truth on `laser-server eval` items "
        "(items.jsonl.gz): simulated logs, coverage over --seeds logs",
    )
    p.add_argument("--config", help="the server's TOML config: the LinUCB settings it served")
    p.add_argument(
        "--alpha", default="0.1,2", help="other LinUCB alphas to replay (comma-separated)"
    )
    p.add_argument("--policy", action="append", default=[], help="a policy file (TOML); repeatable")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=20, help="--validate: independent logs")
    p.add_argument("--export", help="also write the evaluable log as JSONL here")
    p.add_argument("--out", help="write ope.md, ope.json and ope.png into this folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _bandit(args: argparse.Namespace) -> Any:
    from laser.server.config import load_settings

    return load_settings(args.config).bandit


def _write(out: Path, report: dict[str, Any], md: str, truth: dict[str, float] | None) -> None:
    from laser.server.ope.report import plot

    out.mkdir(parents=True, exist_ok=True)
    (out / "ope.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "ope.md").write_text(md + "\n", encoding="utf-8")
    plot(report, out / "ope.png", truth)
    print(f"wrote {out / 'ope.md'}, {out / 'ope.json'}, {out / 'ope.png'}", file=sys.stderr)


def run(args: argparse.Namespace) -> None:
    offline_environment()
    log_to_stderr()
    from laser.server.ope import LogError, default_policies, evaluate, load_policy_file, read_log
    from laser.server.ope.logdata import write_jsonl
    from laser.server.ope.report import markdown

    try:
        bandit = _bandit(args)
        alphas = [float(a) for a in args.alpha.split(",") if a.strip()]
        if args.validate:
            from laser.server.ope import validate

            print(f"simulating {args.seeds} logs over {args.validate} ...", file=sys.stderr)
            report = validate.run(
                Path(args.validate),
                bandit.model_copy(update={"epsilon": max(bandit.epsilon, 0.1)}),
                seeds=args.seeds,
                n_boot=min(args.bootstrap, 500),
            )
            md = validate.markdown(report)
            truth = report["truth"]
        else:
            log = read_log(args.log or args.data_dir or "laser-data")
            policies = default_policies(log, bandit, alphas)
            policies += [load_policy_file(f, bandit) for f in args.policy]
            print(
                f"{log.n} evaluable decisions; estimating {len(policies)} policies ...",
                file=sys.stderr,
            )
            report = evaluate(log, policies, n_boot=args.bootstrap, seed=args.seed)
            md, truth = markdown(report), None
            if args.export:
                write_jsonl(log.rows, Path(args.export))
    except (LogError, ValueError, OSError) as exc:
        sys.exit(f"laser-server ope: {exc}")
    print(json.dumps(report, indent=1) if args.json else md)
    if args.out:
        _write(Path(args.out), report, md, truth)
