"""What every command sets up before it loads anything heavy: the offline environment and
logging. Subcommands import this module; it imports nothing of the project."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any


def offline_environment() -> None:
    """No hub access: set before vLLM/transformers are imported (they read it then). The KV
    cache size on CPU is the engine's setting (`engine.kv_cache_gib`), applied by the engine."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def log_to_stderr() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def progress(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar on stderr (long work shows progress); `enabled=False` keeps it silent."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=True)


def write_atomic_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves the old file or the new one, never half:
    a temporary file beside it, fsynced, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
