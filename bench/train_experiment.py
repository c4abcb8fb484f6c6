"""Does training pay? The training experiment of laser.server.training.experiment, one command.

    .venv/bin/python bench/train_experiment.py --out docs/train/experiment

Resumable: run the same command again after an interruption; finished runs are skipped and
an interrupted one resumes from its last checkpoint (per iteration). The settings below are
the pre-registered ones (decided before the first run); `--smoke` shrinks everything for a
quick check of the plumbing. Writes `experiment.json` (the table, intervals, wall times, RM
shares), `accuracy.png`, `rm_share.png`, `loss.png` and each run's folder (steps.jsonl,
summary.json, its own training.png).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from laser.server.data import load_prompts
from laser.server.training import experiment as ex
from laser.server.training.report import read_steps

RMS = ("arith", "grounding", "loglik", "agreement")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="runs/train-experiment")
    ap.add_argument("--heldout", type=int, default=200, help="held-out items per kind")
    ap.add_argument("--choice", type=int, default=16, help="choice-split prompts per kind")
    ap.add_argument("--train", type=int, default=48, help="training prompts per kind")
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=1, help="pairs per prompt")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--probe-prompts", type=int, default=4)
    ap.add_argument("--runs", default="", help="comma-separated run names (default: all)")
    ap.add_argument("--cache-dir", default="laser-data/cache")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.heldout, args.choice, args.train, args.iterations = 6, 2, 8, 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
    paths = ex.write_splits(out, ex.split_items(args.heldout, args.choice, args.train))
    ex.check_split({k: load_prompts(p) for k, p in paths.items()})
    settings = {
        "prompts": paths["train"],
        "eval_prompts": paths["heldout"],
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "batch_by_task": True,
        "n": args.n,
        "pairs_per_prompt": args.pairs,
        "max_tokens": args.max_tokens,
        "learning_rate": args.lr,
        "bandit_reward": "probe",
        "probe_prompts": args.probe_prompts,
        "likelihoods": "engine",
        "bandit": {"warmup": 1},
        # Four RMs: the two specialists and two generalists (likelihood, self-agreement),
        # so that the warm start (one try per RM and kind) is a third of the run, not half.
        "reward_models": [{"name": n, "kind": n} for n in RMS],
    }
    (out / "settings.json").write_text(json.dumps({**settings, "argv": sys.argv[1:]}, indent=1))
    t0 = time.perf_counter()
    if not args.report_only:
        fixed = choice_phase(out, paths["choice"], settings, args)
        wanted = set(filter(None, args.runs.split(","))) or {r.name for r in ex.RUNS}
        first = None
        for run in ex.RUNS:
            if run.name not in wanted:
                continue
            cfg = ex.run_config(settings, run, fixed, out)
            if first is not None:
                cfg["eval_before_from"] = str(first)
            folder = out / run.name
            if not (folder / "summary.json").exists():
                ex.launch(cfg, folder, args.cache_dir)
            first = first or folder / "summary.json"
    result = ex.report(out, load_prompts(paths["heldout"]))
    result["settings"] = settings
    result["choice"] = json.loads((out / "choice.json").read_text())
    result["command"] = "python bench/train_experiment.py " + " ".join(sys.argv[1:])
    result["machine"] = {"cores": os.cpu_count(), "platform": sys.platform}
    result["experiment_s_this_call"] = round(time.perf_counter() - t0, 1)
    (out / "experiment.json").write_text(json.dumps(result, indent=1))
    plot(out, result)
    table = markdown(result)
    (out / "experiment.md").write_text(table)
    print(table)


def choice_phase(out: Path, choice: str, settings: dict[str, Any], args: Any) -> dict[str, str]:
    """The best fixed RM per kind, chosen on the choice split (written once)."""
    path = out / "choice.json"
    if not path.exists():
        from laser.server.training.config import load_train_config

        cfg = load_train_config(
            None,
            **{
                **{k: v for k, v in settings.items() if k not in ("bandit", "bandit_reward")},
                "prompts": choice,
                "eval_prompts": "",
                "selector": "ensemble",
                "output_dir": str(out / "choice"),
            },
        )
        from laser.server.runtime import offline_environment

        offline_environment()
        result = asyncio.run(ex.choose_fixed(cfg, args.n))
        path.write_text(json.dumps(result, indent=1))
    best: dict[str, str] = json.loads(path.read_text())["best"]
    return best


def markdown(result: dict[str, Any]) -> str:
    """The README's tables, from `experiment.json` alone."""
    acc, kinds = result["accuracy"], list(result["items"])

    def ci(c: dict[str, float]) -> str:
        return f"{c['mean']:+.1f} [{c['lo']:+.1f}, {c['hi']:+.1f}]"

    head = " | ".join(f"{k} ({result['items'][k]})" for k in kinds)
    lines = [
        f"| held-out score, % | {head} | after - before, all (95% CI) | LASeR minus it, all |",
        "|---|" + "---:|" * (len(kinds) + 2),
        "| before (shared) | " + " | ".join(f"{acc['before'][k]:.1f}" for k in kinds) + " | | |",
    ]
    for sel, row in acc.items():
        if sel == "before":
            continue
        vs = row.get(f"minus_{sel}") or acc.get("laser", {}).get(f"minus_{sel}")
        lines.append(
            f"| {sel} ({len(row['seeds'])} seed{'s' if len(row['seeds']) > 1 else ''}) | "
            + " | ".join(f"{row['after'][k]:.1f}" for k in kinds)
            + f" | {ci(row['after_minus_before']['all'])} | "
            + (ci(vs["all"]) if vs and sel != "laser" else "")
            + " |"
        )
    lines += [
        "",
        "| run | steps | wall | sampling | hand-over | RM scoring | DPO | bandit reward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, w in result["wall"].items():
        lines.append(
            f"| {name} | {w['steps']} | {w['wall_s']:.0f} s | {w['generate_s']:.0f} s | "
            f"{w['handover_s']:.0f} s | {w['score_s']:.0f} s | {w['dpo_s']:.0f} s | "
            f"{w['reward_s']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def plot(out: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = result["accuracy"]
    kinds = list(result["items"])
    sels = [s for s in acc if s != "before"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), sharey=False)
    for ax, kind in zip(axes, kinds, strict=True):
        before = acc["before"][kind]
        xs = range(len(sels))
        for x, sel in zip(xs, sels, strict=True):
            ci = acc[sel]["after_minus_before"][kind]
            ax.errorbar(
                x,
                before + ci["mean"],
                yerr=[[ci["mean"] - ci["lo"]], [ci["hi"] - ci["mean"]]],
                fmt="o",
                capsize=4,
            )
        ax.axhline(before, color="grey", ls="--", lw=1, label="before")
        ax.set_xticks(list(xs), sels, rotation=30)
        ax.set_title(f"{kind} (n={result['items'][kind]} held-out)")
        ax.set_ylabel("held-out score after (%)")
        ax.legend(fontsize=8)
    fig.suptitle("after training, paired 95% bootstrap interval of (after - before)")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    laser = [n for n in result["wall"] if n.startswith("laser")]
    kinds_seen = [k for k in kinds if k != "all"]
    fig, axes = plt.subplots(
        max(1, len(laser)), len(kinds_seen), figsize=(5 * len(kinds_seen), 3 * max(1, len(laser))),
        squeeze=False,
    )  # fmt: skip
    for row, name in enumerate(laser):
        steps = read_steps(out / name / "steps.jsonl")
        rms = sorted({s["rm"] for s in steps})
        for col, kind in enumerate(kinds_seen):
            ax = axes[row][col]
            mine = [s["rm"] for s in steps if s["tasks"][0] == kind]
            xs = range(1, len(mine) + 1)
            for i, rm in enumerate(rms):
                share = [mine[: t + 1].count(rm) / (t + 1) for t in range(len(mine))]
                ax.plot(xs, share, label=rm, color=f"C{i}")
            ax.set_ylim(0, 1)
            ax.set_xlabel(f"{kind} steps")
            ax.set_ylabel("share so far")
            ax.set_title(f"{name}: RM share on {kind}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "rm_share.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.6))
    colours: dict[str, Any] = {}
    for name in laser:
        for s in read_steps(out / name / "steps.jsonl"):
            if s.get("loss") is None:
                continue
            c = colours.setdefault(s["rm"], f"C{len(colours)}")
            ax.scatter(s["step"], s["loss"], color=c, s=14)
    for rm, c in colours.items():
        ax.scatter([], [], color=c, label=rm)
    ax.set_xlabel("step")
    ax.set_ylabel("DPO + NLL loss")
    ax.set_title("LASeR runs: loss per step, coloured by the RM used")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
