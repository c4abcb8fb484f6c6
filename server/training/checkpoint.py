"""Checkpoints: everything needed to continue a run exactly, without pickle.

A checkpoint is a folder `checkpoints/iter-<k>/` holding
- `adapter/`: the policy's LoRA adapter (peft `save_pretrained`, safetensors): servable;
- `reference.safetensors`: the reference adapter weights (the policy at iteration start);
- `optimizer.safetensors` + the `optimizer` entry of `state.json`: AdamW moments and steps;
- `selector.npz`, `squash.npz`: the bandit (or baseline selector) and the bandit reward's
  state (the shared loss baseline and the advantages' history, or the paper's squash), in
  the laser.bandit format;
- `rng.safetensors` + `state.json`: step, iteration, RNG states, counters.

It is written to `iter-<k>.tmp/`, fsynced, then renamed, and `latest` (a one-line file) is
replaced atomically afterwards: a kill or a full disk mid-write leaves the previous
checkpoint as the one `latest` names.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from laser.server.runtime import write_atomic_text


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def optimizer_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer `state_dict()` -> (tensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = float(value)
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    tensors: dict[str, torch.Tensor], rest: dict[str, Any]
) -> dict[str, Any]:
    per: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        per.setdefault(int(idx), {})[key] = value
    for idx, values in rest.get("scalars", {}).items():
        per.setdefault(int(idx), {}).update(values)
    return {"state": per, "param_groups": rest["param_groups"]}


def save_checkpoint(
    root: Path,
    iteration: int,
    *,
    save_adapter: Any,
    reference: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    selector_bytes: bytes | None,
    squash_bytes: bytes,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write checkpoint `iter-<iteration>` atomically and point `latest` at it."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter-{iteration}"
    tmp = root / f"iter-{iteration}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_adapter(tmp / "adapter")
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in reference.items()},
            str(tmp / "reference.safetensors"),
        )
        opt_tensors, opt_rest = optimizer_to_tensors(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        if selector_bytes is not None:
            (tmp / "selector.npz").write_bytes(selector_bytes)
        (tmp / "squash.npz").write_bytes(squash_bytes)
        (tmp / "state.json").write_text(
            json.dumps({**state, "optimizer": opt_rest}, indent=1), encoding="utf-8"
        )
        _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_atomic_text(root / "latest", final.name + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The folder `latest` names, if it is complete; None when there is none."""
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "state.json").exists() else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    opt_rest = state.pop("optimizer")
    return {
        "state": state,
        "adapter_dir": path / "adapter",
        "reference": load_file(str(path / "reference.safetensors")),
        "optimizer": optimizer_from_tensors(
            load_file(str(path / "optimizer.safetensors")), opt_rest
        ),
        "rng": load_file(str(path / "rng.safetensors")),
        "selector": (path / "selector.npz").read_bytes()
        if (path / "selector.npz").exists()
        else None,
        "squash": (path / "squash.npz").read_bytes(),
    }
