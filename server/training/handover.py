"""How the policy being trained reaches the vLLM sampler after each DPO step.

`merged` (the default): the LoRA deltas are added to a copy of the base weights
(`W + scale * B @ A` per adapted module, the model itself untouched), written as one
safetensors file in the engine's dtype, and reloaded in place by the engine
(`VLLMEngine.load_weights`). Sampling then runs at the base model's speed. `lora`: the
adapter is saved and handed to vLLM's LoRA path under a new id; on CPU that path made
generation about 4x slower (measured: `bench/train_handover.py`). `PolicySampler` does one
or the other before each step's sampling.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laser.server.engines.base import Adapter

if TYPE_CHECKING:
    from laser.server.training.config import TrainConfig
    from laser.server.training.parts import Policy

WEIGHTS_FILE = "model.safetensors"


def merged_state_dict(policy: Any, dtype: Any) -> dict[str, Any]:
    """The policy's weights with every LoRA delta merged, under the base model's names
    (what its checkpoint holds), as contiguous `dtype` tensors. Tied weights appear once."""
    import torch
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    out: dict[str, Any] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                layer: Any = module  # peft's Linear: base_layer, lora_A, get_delta_weight
                merged = layer.base_layer.weight.detach().clone()
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        merged += layer.get_delta_weight(adapter)
                out[f"{name}.weight"] = merged.to(dtype).contiguous()
        for name, param in base.named_parameters():
            if "lora_" in name or ".base_layer." in name:
                continue
            out[name] = param.detach().to(dtype).contiguous()
    return out


def write_merged(policy: Any, folder: Path, dtype: Any) -> Path:
    """Write the merged weights to `folder/model.safetensors` atomically (a reader sees the
    old file or the new one, never half of one); returns the folder."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{WEIGHTS_FILE}.partial"  # not *.safetensors: loaders glob for that
    save_file(merged_state_dict(policy, dtype), str(partial), metadata={"format": "pt"})
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, folder / WEIGHTS_FILE)
    return folder


def torch_dtype(name: str) -> Any:
    """The torch dtype named by an engine's resolved dtype ("bfloat16", "float32", ...);
    float32 for anything else."""
    import torch

    found = getattr(torch, str(name), None)
    return found if isinstance(found, torch.dtype) else torch.float32


class PolicySampler:
    """Keeps the training run's sampler engine on the current policy's weights."""

    def __init__(self, engine: Any, policy: Policy, cfg: TrainConfig, out: Path) -> None:
        self.engine = engine  # `load_weights` and `dtype` for `merged`: a vLLM engine's
        self.policy = policy
        self.engine_kind, self.handover = cfg.engine, cfg.handover
        self.out = out
        self.holds = 0  # the step whose weights the vLLM engine holds (0: the base model's)

    async def adapter(self, step: int) -> Adapter | None:
        """Hand the weights after `step` steps to vLLM; the adapter to sample with, if any.

        `merged` reloads the merged weights into the engine once per step (no adapter then);
        `lora` saves the adapter, which vLLM loads under a new id (it caches adapters by
        id). HF generation uses the model itself."""
        if self.engine_kind == "hf" or step == 0:
            return None
        acc = self.policy.acc
        if self.handover == "merged":
            folder = self.out / "sampler" / f"rank-{acc.process_index}"
            if self.holds != step:
                dtype = torch_dtype(getattr(self.engine, "dtype", "float32"))
                await asyncio.to_thread(write_merged, self.policy.unwrapped(), folder, dtype)
                await self.engine.load_weights(str(folder))
                self.holds = step
            elif getattr(self.engine, "holds_base", False):
                # The engine scored with the base weights since (base-model likelihoods at
                # engine speed): the policy's merged file is current, load it again.
                await self.engine.load_weights(str(folder))
            return None
        path = self.out / "adapters" / f"step-{step}"
        if not path.exists():
            self.policy.unwrapped().save_pretrained(path)
            old = self.out / "adapters" / f"step-{step - 2}"
            shutil.rmtree(old, ignore_errors=True)
        return Adapter(f"policy-{step}", str(path), step + 1)
