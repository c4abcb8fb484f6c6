"""What a training run is made of, built once before its first step.

`check_inputs` checks what can be checked before any model loads (the prompts, the model and
RM paths, the output folder); `build_parts` then loads the policy (the model with LoRA
adapters, on the accelerator) with its frozen reference and optimiser, the sampler engine,
the RMs and the selector, and renders, tokenizes and featurizes every prompt. The `Trainer`
gets them whole, as one `TrainingParts`.

    parts = build_parts(cfg, cache_dir=Path("laser-data/cache"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from laser.bandit import (
    FixedArm,
    LinUCB,
    LinUCBConfig,
    RoundRobin,
    Selector,
    UniformRandom,
    load_selector,
)
from laser.server import assets
from laser.server.data import DataError, PromptItem, load_prompts
from laser.server.engines.base import Engine
from laser.server.featurize import Featurizer, SentenceEncoder
from laser.server.priors import apply_priors, load_priors
from laser.server.prompts import format_documents
from laser.server.rms.base import RewardModel
from laser.server.services import build_reward_model, check_reward_model_options, vllm_engine
from laser.server.training.config import TrainConfig

if TYPE_CHECKING:
    from accelerate import Accelerator

Contexts = npt.NDArray[np.float64]
"""One bandit context (a row of features) per prompt."""


class TrainingError(ValueError):
    """The run cannot start (bad prompts, unknown RM, missing model) or cannot go on."""


def check_inputs(cfg: TrainConfig) -> tuple[list[PromptItem], list[PromptItem]]:
    """Everything that can be checked before any model loads: the training and held-out
    prompts (returned), the model and RM options, and the output folder (created)."""
    if not cfg.prompts:
        raise TrainingError("no prompts file: set `prompts` (a JSONL of prompt/reference/task)")
    try:
        items = load_prompts(cfg.prompts)
        held_out = load_prompts(cfg.eval_prompts) if cfg.eval_prompts else []
    except DataError as exc:
        raise TrainingError(str(exc)) from None
    if any(it.reference is None for it in held_out):
        raise TrainingError("every eval_prompts item needs a `reference`")
    if cfg.model and not (Path(cfg.model) / "config.json").is_file():
        raise TrainingError(f"model {cfg.model!r} is not a model folder (no config.json)")
    for rm in cfg.reward_models:
        try:
            check_reward_model_options(rm)  # the server's rule, checked before it builds
        except ValueError as exc:
            raise TrainingError(f"reward model {rm.name!r}: {exc}") from None
        path = rm.options.get("path")
        if rm.kind in ("hf", "vllm_pooling") and not (path and Path(str(path)).is_dir()):
            raise TrainingError(f"reward model {rm.name!r}: path {path!r} is not a folder")
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create output_dir {str(out)!r}: {exc}") from None
    return items, held_out


def linucb_config(cfg: TrainConfig, dim: int, regions: int) -> LinUCBConfig:
    """LinUCB as the server configures it (`cfg.bandit`), seeded by the run's `seed`."""
    return cfg.bandit.linucb(dim, regions, seed=cfg.seed)


def make_selector(
    cfg: TrainConfig, names: list[str], dim: int, regions: int = 0
) -> Selector | None:
    """The run's selector over RMs `names` for `dim`-feature contexts whose first `regions`
    features are the kind-of-query one-hot (None for the ensemble: no choice)."""
    if cfg.selector == "laser":
        bandit = LinUCB(linucb_config(cfg, dim, regions), names)
        if cfg.bandit.priors is not None:
            # Priors are in the units of serving's feedback (answer quality); the training
            # reward has its own scale, so they only set where the bandit starts.
            apply_priors(bandit, load_priors(cfg.bandit.priors), cfg.bandit.prior_strength)
        return bandit
    if cfg.selector == "fixed":
        # With `fixed_rm_by_task` the loop picks per task; this arm is the fallback.
        fixed = cfg.fixed_rm or next(iter(cfg.fixed_rm_by_task.values()))
        return FixedArm(fixed, names)
    if cfg.selector == "random":
        return UniformRandom(names, seed=cfg.seed)
    if cfg.selector == "sequential":
        return RoundRobin(names)
    return None  # ensemble: every RM, no choice


def seeded_bandit(path: Path, fresh: LinUCB, rms: list[str]) -> LinUCB:
    """The server's bandit saved at `path` (what it learnt), run with `fresh`'s settings and
    every RM in `rms` enabled. LinUCB only: its statistics are what a server would hand over."""
    seeded = load_selector(path)
    if not isinstance(seeded, LinUCB) or (seeded.config.dim, seeded.config.regions) != (
        fresh.config.dim,
        fresh.config.regions,
    ):
        raise TrainingError(
            "initial bandit: not a LinUCB over this featurizer's context (dimension and "
            "kinds of query must match the server's [featurizer] settings)"
        )
    seeded.config = fresh.config  # alpha, epsilon, warm-up: this run's (as on restore)
    for name in rms:
        if name not in seeded.arms:
            seeded.add_arm(name)
        elif not seeded.is_enabled(name):
            seeded.enable_arm(name)
    return seeded


def render(engine: Engine, item: PromptItem) -> str:
    """`item` as the policy sees it: its documents and question in the chat template."""
    content = format_documents(item.prompt, item.documents) if item.documents else item.prompt
    return engine.render_chat([{"role": "user", "content": content}])


@dataclass(frozen=True)
class Policy:
    """The model being trained and what trains it: the DPO step's and the checkpoint's."""

    acc: Accelerator
    tok: Any  # the policy's transformers tokenizer
    model: torch.nn.Module  # the LoRA model as `acc` prepared it (wrapped under DDP)
    optimizer: torch.optim.Optimizer
    params: dict[str, torch.nn.Parameter]  # the trainable (LoRA) weights, by name
    reference: dict[str, torch.Tensor]  # the frozen reference's values of `params`

    def unwrapped(self) -> Any:
        """The peft model itself: what HF generation samples from, what is saved as an
        adapter and merged for vLLM."""
        return self.acc.unwrap_model(self.model)

    def response_ids(self, text: str, finish: str | None) -> list[int]:
        """The token ids of a response to train on; `finish`: why its generation stopped."""
        ids: list[int] = self.tok(text, add_special_tokens=False)["input_ids"]
        # A response that ended by itself is trained to end: its EOS is part of it.
        if finish == "stop" and self.tok.eos_token_id is not None:
            ids = [*ids, self.tok.eos_token_id]
        return ids


@dataclass(frozen=True)
class TrainingParts:
    """Everything a `Trainer` uses, built once by `build_parts`."""

    items: list[PromptItem]  # the training prompts
    held_out: list[PromptItem]  # `eval_prompts`: greedy accuracy before and after
    policy: Policy
    model_name: str
    engine: Engine  # the sampler: vLLM following the policy, or HF generating with it
    rms: dict[str, RewardModel]
    selector: Selector | None  # None: the ensemble of every RM
    prompts: list[str]  # each item rendered (`render`)
    prompt_ids: list[list[int]]  # ... and tokenized
    contexts: Contexts  # ... and featurized for the bandit


def build_parts(
    cfg: TrainConfig, *, cache_dir: Path | None = None, initial_bandit: Path | None = None
) -> TrainingParts:
    """Check the inputs, then load and build everything the run needs (minutes at worst).

    `cache_dir` holds the embedded model (converted once); `initial_bandit` is a server's
    saved LinUCB to start from (LASeR only). The engine is shut down if a later part fails.
    """
    items, held_out = check_inputs(cfg)
    torch.manual_seed(cfg.seed)
    model_path = cfg.model or str(assets.embedded_model(cache_dir or Path("laser-data") / "cache"))
    policy = _load_policy(cfg, model_path)
    model_name = Path(model_path).name
    engine = _sampler_engine(cfg, policy, model_path, model_name)
    try:
        encoder = SentenceEncoder(cfg.featurizer.model or assets.minilm_path())
        # The server's featurizer, from the same settings: a seeded bandit means the same.
        featurizer = Featurizer.from_settings(encoder, cfg.featurizer)
        rms = {
            spec.name: build_reward_model(
                spec, engine=engine, encoder=encoder, allowed_hosts=cfg.outbound_hosts
            )
            for spec in cfg.reward_models
        }
        selector = make_selector(cfg, list(rms), featurizer.dim, featurizer.regions)
        if initial_bandit is not None and isinstance(selector, LinUCB):
            selector = seeded_bandit(initial_bandit, selector, list(rms))
        prompts = [render(engine, it) for it in items]
        prompt_ids = _tokenized(cfg, policy.tok, prompts)
        contexts = featurizer.features_batch(
            [it.prompt for it in items],
            [bool(it.documents) for it in items],
            [it.task for it in items],
        )
    except BaseException:
        engine.shutdown()
        raise
    return TrainingParts(
        items, held_out, policy, model_name, engine, rms, selector, prompts, prompt_ids, contexts
    )


def _load_policy(cfg: TrainConfig, model_path: str) -> Policy:
    """The policy: LoRA adapters on the model at `model_path`, the only weights trained."""
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    acc = Accelerator(cpu=not torch.cuda.is_available())
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        task_type="CAUSAL_LM",
    )
    try:
        lora_model = get_peft_model(base, lora)
    except ValueError as exc:
        raise TrainingError(f"LoRA targets {cfg.lora_targets}: {exc}") from None
    params = {n: p for n, p in lora_model.named_parameters() if p.requires_grad}
    # The reference starts as the initial policy (LoRA B = 0: the base model).
    reference = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.learning_rate)
    model, optimizer = acc.prepare(lora_model, optimizer)
    return Policy(acc, tok, model, optimizer, params, reference)


def _sampler_engine(cfg: TrainConfig, policy: Policy, model_path: str, model_name: str) -> Engine:
    """The engine that samples the policy's responses (`cfg.engine`)."""
    if cfg.engine == "hf":
        from laser.server.engines.hf_engine import HFEngine

        lora_model = policy.unwrapped()  # generates with the weights being trained
        return HFEngine(
            lora_model,
            policy.tok,
            name=model_name,
            max_model_len=cfg.max_model_len,
            scoring_context=lora_model.disable_adapter,
        )
    # The server's engine settings (dtype, KV cache, ...); the run fixes the context,
    # the seed and LoRA (on, at the rank it trains, when the adapter is handed over).
    settings = cfg.vllm.model_copy(
        update={
            "max_model_len": cfg.max_model_len,
            "seed": cfg.seed,
            "enable_lora": cfg.handover == "lora",
            "max_lora_rank": max(cfg.lora_r, 8),
            # The merged hand-over adds small LoRA deltas to the weights: in bfloat16 (vLLM's
            # "auto" on CPUs with bf16) most of them round away and the sampler would not
            # follow the policy. float32 unless a dtype is configured.
            "dtype": "float32" if cfg.vllm.dtype == "auto" else cfg.vllm.dtype,
        }
    )
    from laser.server.engines.vllm_engine import VLLMEngine

    engine = vllm_engine(settings, model_path, model_name)
    if isinstance(engine, VLLMEngine):  # RMs' base-model likelihoods: engine or HF copy
        engine.base_likelihoods = cfg.likelihoods
    return engine


def _tokenized(cfg: TrainConfig, tok: Any, prompts: list[str]) -> list[list[int]]:
    """Each prompt's token ids; a prompt that leaves no room for `max_tokens` fails the run."""
    prompt_ids: list[list[int]] = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for i, ids in enumerate(prompt_ids):
        if len(ids) + cfg.max_tokens > cfg.max_model_len:
            raise TrainingError(
                f"prompt {i + 1} is {len(ids)} tokens; with max_tokens={cfg.max_tokens} it "
                f"does not fit max_model_len={cfg.max_model_len}"
            )
    return prompt_ids
