"""A run's progress, saved after each iteration and restored by `--resume`.

`save_run` writes a checkpoint (`checkpoint.py`: the format) of everything that changes as
the run goes: the policy's adapter, the reference, the optimiser, the selector, the bandit
reward's state, the torch RNG and the `RunState` counters. `restore_run` puts the latest one
back into the run's parts, so the resumed run continues exactly as the full run would have.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from laser.bandit import Selector, from_bytes, to_bytes
from laser.server.runtime import write_atomic_text
from laser.server.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from laser.server.training.config import TrainConfig
from laser.server.training.parts import Policy, TrainingError
from laser.server.training.reward import BanditReward

log = logging.getLogger("laser.server.training")


@dataclass
class RunState:
    iteration: int = 0  # iterations completed
    step: int = 0  # optimisation steps completed
    rm_counts: dict[str, int] = field(default_factory=dict)
    eval_before: dict[str, Any] | None = None
    elapsed_s: float = 0.0


def save_run(
    out: Path,
    state: RunState,
    policy: Policy,
    selector: Selector | None,
    reward: BanditReward,
    cfg: TrainConfig,
) -> Path:
    """Checkpoint `iter-<state.iteration>` under `out/checkpoints`."""
    return save_checkpoint(
        out / "checkpoints",
        state.iteration,
        save_adapter=lambda p: policy.unwrapped().save_pretrained(p),
        reference=policy.reference,
        optimizer_state=policy.optimizer.state_dict(),
        selector_bytes=to_bytes(selector) if selector is not None else None,
        squash_bytes=to_bytes(reward),
        rng={"torch": torch.get_rng_state()},
        state={
            "iteration": state.iteration,
            "step": state.step,
            "rm_counts": state.rm_counts,
            "eval_before": state.eval_before,
            "elapsed_s": state.elapsed_s,
            "config": cfg.storable(),
        },
    )


def restore_run(
    out: Path, policy: Policy, selector: Selector | None, reward: BanditReward
) -> RunState:
    """Load the latest checkpoint under `out` into the policy, the selector and the reward;
    returns its counters (fresh ones without a checkpoint: the run starts from the
    beginning)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(out / "checkpoints")
    if ckpt is None:
        log.info("no checkpoint in %s: starting from the beginning", out)
        return RunState()
    data = load_checkpoint(ckpt)
    adapter = load_file(str(data["adapter_dir"] / "adapter_model.safetensors"))
    set_peft_model_state_dict(policy.unwrapped(), adapter)
    for name, value in data["reference"].items():
        policy.reference[name] = value.to(policy.params[name].device)
    policy.optimizer.load_state_dict(data["optimizer"])
    torch.set_rng_state(data["rng"]["torch"])
    if data["selector"] is not None and selector is not None:
        selector.load_state_dict(from_bytes(data["selector"]))
    try:
        reward.load_state_dict(from_bytes(data["squash"]))
    except ValueError as exc:
        raise TrainingError(f"cannot resume from {ckpt}: {exc}") from None
    s = data["state"]
    # Logs written after the checkpoint belong to the interrupted attempt: drop them.
    for name in ("steps.jsonl", "pairs.jsonl"):
        _truncate_log(out / name, s["step"])
    log.info("resumed from %s (iteration %d, step %d)", ckpt, s["iteration"], s["step"])
    return RunState(
        iteration=s["iteration"],
        step=s["step"],
        rm_counts=s["rm_counts"],
        eval_before=s.get("eval_before"),
        elapsed_s=s.get("elapsed_s", 0.0),
    )


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the records of `path` (JSON lines) up to step `last_step`."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["step"] <= last_step
    ]
    write_atomic_text(path, "".join(line + "\n" for line in keep))
