"""How the policy being trained reaches the vLLM sampler after each DPO step.

`merged` (the default): the LoRA deltas are added to a copy of the base weights
(`W + scale * B @ A` per adapted module, the model itself untouched), written as one
safetensors file in the engine's dtype, and reloaded in place by the engine
(`VLLMEngine.load_weights`). Sampling then runs at the base model's speed. `lora`: the
adapter is saved and handed to vLLM's LoRA path under a new id; on CPU that path made
generation about 4x slower (measured: `bench/train_handover.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
