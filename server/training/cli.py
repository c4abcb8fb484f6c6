"""`laser-server train`: flags, then the loop. Heavy imports happen inside `run`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from laser.server.runtime import log_to_stderr, offline_environment

# Flags come from TrainConfig's fields (name, type, description): `--batch-size` sets
# `batch_size`; the bandit section's fields go without prefix (`--alpha` sets `bandit.alpha`).
# A few fields keep their established short names.
_ALIASES = {"learning_rate": "--lr"}
_SECTION_FLAGS = {
    "bandit": ("alpha", "epsilon", "warmup", "ridge"),
    "vllm": ("dtype", "kv_cache_gib"),
}


def _boolean(text: str) -> bool:
    """`--batch-by-task true`: a boolean flag's value."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flags() -> list[tuple[str, str, Any, str]]:
    """(flag, TrainConfig key, type, help) for every scalar field and the section fields."""
    from typing import Literal, get_args, get_origin

    from laser.server.training.config import TrainConfig

    def scalar(annotation: Any) -> tuple[Any, str] | None:
        if annotation is bool:
            return _boolean, "true | false"
        if get_origin(annotation) is Literal:
            return str, " | ".join(str(a) for a in get_args(annotation))
        if annotation in (str, int, float):
            return annotation, ""
        args = get_args(annotation)  # X | None
        if type(None) in args and len(args) == 2:
            (inner,) = [a for a in args if a is not type(None)]
            if inner in (str, int, float):
                return inner, ""
        return None

    out = []
    for name, field in TrainConfig.model_fields.items():
        kind = scalar(field.annotation)
        if kind is not None:
            typ, choices = kind
            help_ = (field.description or name.replace("_", " ")) + (
                f" ({choices})" if choices else ""
            )
            flag = _ALIASES.get(name, "--" + name.replace("_", "-"))
            out.append((flag, name, typ, f"{help_}; default {field.default!r}"))
        if name in _SECTION_FLAGS:
            section = field.annotation
            for sub_name in _SECTION_FLAGS[name]:
                sub_field = section.model_fields[sub_name]  # type: ignore[union-attr]
                out.append(
                    (
                        "--" + sub_name.replace("_", "-"),
                        f"{name}.{sub_name}",
                        sub_field.annotation,
                        f"{sub_field.description or sub_name}; default {sub_field.default!r}",
                    )
                )
    return out


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="LASeR iterative DPO training (bandit-chosen RM per batch)",
        description=(
            "Run LASeR's training loop (or a baseline selector) on a prompts file. A --config "
            "TOML/JSON file sets any TrainConfig field (laser.server.training.config); flags "
            "override it. `--demo N` writes N arithmetic training prompts and a held-out set "
            "into the output dir and trains on them. Several GPUs: `accelerate launch "
            "$(which laser-server) train ...`."
        ),
    )
    p.add_argument("--config", help="TOML or JSON TrainConfig file")
    for flag, dest, typ, help_ in _flags():
        p.add_argument(flag, dest=dest, type=typ, help=help_, metavar=dest.split(".")[-1].upper())
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--demo", type=int, metavar="N", help="train on N generated arithmetic items")
    p.add_argument("--demo-eval", type=int, default=40, metavar="M", help="held-out demo items")
    p.add_argument("--data-dir", default="laser-data", help="model cache lives in <dir>/cache")
    p.add_argument("--cache-dir", help="model cache (default <data-dir>/cache)")
    p.add_argument("--job-id", help=argparse.SUPPRESS)  # set by the server for its jobs
    p.add_argument("--initial-bandit", help="LinUCB state (.npz) to start from (server-seeded)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the flags set (None: not given); dotted keys name a field of
    a section (`bandit.warmup`)."""
    return {dest: getattr(args, dest) for _, dest, _, _ in _flags()}


def run(args: argparse.Namespace) -> None:
    offline_environment()
    from pydantic import ValidationError

    from laser.server.data import arithmetic_items, write_prompts
    from laser.server.training.config import load_train_config
    from laser.server.training.loop import Cancelled, TrainingError, run_training

    log_to_stderr()
    try:
        cfg = load_train_config(args.config, **flag_overrides(args))
        if args.demo:
            out = Path(cfg.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            # Held-out items come from another seed's stream, so they differ from training's.
            write_prompts(out / "demo_train.jsonl", arithmetic_items(args.demo, seed=cfg.seed))
            held = arithmetic_items(args.demo_eval, seed=cfg.seed + 10_000)
            write_prompts(out / "demo_eval.jsonl", held)
            cfg = cfg.model_copy(
                update={
                    "prompts": str(out / "demo_train.jsonl"),
                    "eval_prompts": cfg.eval_prompts or str(out / "demo_eval.jsonl"),
                }
            )
    except (ValidationError, OSError, ValueError) as exc:
        from laser.server.config import config_error_text

        sys.exit(f"laser-server train: bad configuration: {config_error_text(exc)}")

    stop = {"flag": False}

    def on_term(signum: int, frame: Any) -> None:
        # Finish the current step, then stop: the last checkpoint stays the resume point.
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        summary = asyncio.run(
            run_training(
                cfg,
                resume=args.resume,
                progress=not args.no_progress,
                cache_dir=Path(args.cache_dir or Path(args.data_dir) / "cache"),
                should_stop=lambda: stop["flag"],
                initial_bandit=Path(args.initial_bandit) if args.initial_bandit else None,
            )
        )
    except TrainingError as exc:
        sys.exit(f"laser-server train: {exc}")
    except Cancelled as exc:
        print(f"laser-server train: cancelled ({exc}); resume with --resume", file=sys.stderr)
        sys.exit(3)
    print(json.dumps(summary, indent=1))
