"""The evaluation's table as one file (`table.npz`, written beside every report): every
candidate's grade and answer key, every RM's scores and timings, the contexts, the noise RM.
It is the raw data the report's numbers come from, and `laser-server eval --replay DIR`
recomputes the whole report from it without a model (the same numbers, by construction).

Format: numpy `.npz` (loaded with `allow_pickle=False`): `__meta__` (UTF-8 JSON: tasks,
kinds, keys, regions, RM names, ensemble members, context variants and their regions,
metric per task, collection stats), `quality`, `exact`, `contexts`, `score:<rm>`,
`seconds:<rm>`, `context:<variant>`, and `noise` when the noise RM was collected.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from laser.server.evaluation.strategies import Table

FORMAT, VERSION = "laser.eval.table", 1


def save_table(
    path: str | os.PathLike[str],
    t: Table,
    noise: np.ndarray | None,
    metrics: dict[str, str],
    stats: dict[str, Any],
) -> None:
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tasks": t.tasks,
        "kinds": t.kinds,
        "keys": t.keys,
        "regions": t.regions,
        "rms": t.rms,
        "ensemble_members": t.ensemble_members,
        "variants": {k: r for k, (_, r) in t.context_variants.items()},
        "metrics": metrics,
        "stats": stats,
    }
    assert t.exact is not None
    arrays: dict[str, Any] = {
        "__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "quality": t.quality,
        "exact": t.exact,
        "contexts": t.contexts,
        **{f"score:{rm}": s for rm, s in t.scores.items()},
        **{f"seconds:{rm}": s for rm, s in t.score_seconds.items()},
        **{f"context:{k}": c for k, (c, _) in t.context_variants.items()},
    }
    if noise is not None:
        arrays["noise"] = noise
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = Path(f"{os.fspath(path)}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def load_table(
    path: str | os.PathLike[str],
) -> tuple[Table, np.ndarray | None, dict[str, str], dict[str, Any]]:
    """(table, noise scores, metric per task, collection stats) of a `save_table` file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = {name: npz[name] for name in npz.files}
        meta = json.loads(files.pop("__meta__").tobytes().decode())
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not an evaluation table ({exc})") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file")
    rms = meta["rms"]
    ensembles = meta["ensemble_members"]
    table = Table(
        tasks=meta["tasks"],
        quality=files["quality"],
        scores={rm: files[f"score:{rm}"] for rm in rms},
        contexts=files["contexts"],
        exact=files["exact"],
        score_seconds={rm: files[f"seconds:{rm}"] for rm in rms if f"seconds:{rm}" in files},
        regions=int(meta["regions"]),
        context_variants={k: (files[f"context:{k}"], int(r)) for k, r in meta["variants"].items()},
        keys=meta["keys"],
        kinds=meta["kinds"],
        ensemble_members={k: list(v) for k, v in ensembles.items()},
    )
    return table, files.get("noise"), dict(meta["metrics"]), dict(meta["stats"])
