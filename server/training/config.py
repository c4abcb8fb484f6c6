"""`TrainConfig`: everything one training run needs, from a TOML/JSON file, flags or the API.

Defaults run LASeR on the embedded default (SmolLM2-135M-Instruct on CPU, the built-in RMs).
The paper's values are kept where the CPU allows (beta 0.1, NLL weight 1.0, LoRA r=16,
alpha=32 on q_proj/v_proj, lr 5e-6); n, batch size and response length are smaller.

The bandit and its context are configured exactly as the server's (`bandit` is the server's
`BanditSettings`, `featurizer` its `FeaturizerSettings`), so a bandit seeded from a server means
the same thing in training; the vLLM sampler takes the server's `EngineSettings` (`vllm`).
The flat keys of earlier configs still work: `alpha` ->
`bandit.alpha`, `feature_dim` -> `featurizer.dim`, `feature_seed` -> `featurizer.seed`.

    prompts = "data/train.jsonl"
    selector = "laser"          # or fixed / random / sequential / ensemble
    iterations = 2
    bandit_reward = "baseline"  # or "squashed_loss" (the paper's)
    [bandit]                    # the server's [bandit] section: alpha, ridge, epsilon, warmup
    warmup = 2
    [featurizer]                # the server's [featurizer] section: the bandit's context
    context = "kind"
    [[reward_models]]
    name = "agreement"
    kind = "agreement"
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from laser.server.config import (
    BanditSettings,
    EngineSettings,
    FeaturizerSettings,
    RewardModelSpec,
    default_reward_models,
)
from laser.server.outbound import LOOPBACK

# Flat keys of earlier TrainConfigs -> (section, key) of the embedded server settings.
_LEGACY_KEYS = {
    "alpha": ("bandit", "alpha"),
    "feature_dim": ("featurizer", "dim"),
    "feature_seed": ("featurizer", "seed"),
}

BANDIT_REWARD_HELP = (
    "the bandit's reward for the RM a step used. `baseline` (default): the advantage of the "
    "step's loss over a running baseline shared by all arms (an exponential moving average "
    "of the previous steps' losses, whatever RM they used, weight `baseline_weight`; it "
    "restarts each iteration, when the reference re-sync makes the loss jump), squashed to "
    "[0, 1] by the 20th/80th percentiles of the last 20 steps' advantages; a step with no "
    "baseline yet "
    "earns 0.5. A falling loss shifts every arm's advantage alike, so an RM is rewarded for "
    "beating the trend, not for coming later. `squashed_loss`: the paper's, the step's "
    "negative loss squashed by the percentiles of past rewards; as the loss falls every "
    "later step scores high, so whichever RM goes first tends to keep winning. In "
    "`per_query` mode each prompt's RM is rewarded with that prompt's own pairs' loss, "
    "against the same shared baseline. `probe` (label-free): the change, over the step, of "
    "the policy's margin on a fixed probe of consensus pairs of the batch's kind of query, "
    "squashed by the percentiles of the last 20 changes (laser.server.training.probe)"
)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: str = Field("", description="prompts JSONL (prompt, document(s), reference, task)")
    eval_prompts: str = Field(
        "", description="held-out JSONL with references: greedy accuracy before and after"
    )
    eval_before_from: str = Field(
        "",
        description="a summary.json whose `eval_before` (same model, same eval_prompts) is "
        "this run's, not evaluated again: runs side by side share one 'before'",
    )
    model: str = Field("", description="policy model folder; empty = embedded SmolLM2-135M")
    output_dir: str = Field("runs/train", description="logs, pairs, checkpoints, plot")
    engine: Literal["vllm", "hf"] = Field(
        "vllm",
        description="sampler: vLLM (following the policy as `handover` says), or HF "
        "generate on the model being trained",
    )
    handover: Literal["merged", "lora"] = Field(
        "merged",
        description="how the vLLM sampler follows the policy after each step: `merged` "
        "(the adapter merged into the base weights, reloaded in place: base-model speed) or "
        "`lora` (the adapter through vLLM's LoRA path: about 4x slower generation on CPU)",
    )
    reward_models: list[RewardModelSpec] = Field(default_factory=default_reward_models)
    selector: Literal["laser", "fixed", "random", "sequential", "ensemble"] = Field(
        "laser", description="how the RM is chosen per batch (baselines use the same loop)"
    )
    fixed_rm: str | None = Field(None, description="the RM for selector = 'fixed'")
    fixed_rm_by_task: dict[str, str] = Field(
        default_factory=dict,
        description="selector = 'fixed': an RM per task (kind of query); tasks not listed "
        "use `fixed_rm`",
    )
    batch_by_task: bool = Field(
        False,
        description="each batch holds prompts of one task (kinds alternate, all in every "
        "iteration): a step's bandit reward then belongs to one kind of query",
    )
    bandit_mode: Literal["batch", "per_query"] = Field(
        "batch", description="one RM per batch (paper) or per prompt (authors' later code)"
    )
    bandit_reward: Literal["baseline", "squashed_loss", "probe"] = Field(
        "baseline", description=BANDIT_REWARD_HELP
    )
    probe_prompts: int = Field(
        8,
        ge=1,
        description="bandit_reward = 'probe': prompts per kind of query in the probe (one "
        "consensus pair each)",
    )
    likelihoods: Literal["engine", "hf"] = Field(
        "engine",
        description="where the `loglik`/`judge` RMs get the base model's likelihoods once the "
        "vLLM sampler holds the policy: `engine` (its base weights reloaded for the scoring, "
        "engine speed) or `hf` (a transformers copy of the base model)",
    )
    baseline_weight: float = Field(
        0.3,
        gt=0,
        le=1,
        description="bandit_reward = 'baseline': weight of the newest step loss in the "
        "shared moving-average baseline",
    )
    bandit: BanditSettings = Field(
        default_factory=BanditSettings,
        description="LinUCB as the server runs it (alpha, ridge, epsilon, warmup: tries per "
        "RM and kind of query before UCB); the run's `seed` seeds it, `snapshot_every` is "
        "unused here",
    )
    featurizer: FeaturizerSettings = Field(
        default_factory=FeaturizerSettings,
        description="the bandit's context, as the server computes it (kind of query by "
        "default); its one-hot kinds are the warm start's regions",
    )
    vllm: EngineSettings = Field(
        default_factory=EngineSettings,
        description="the vLLM sampler: the server's [engine] section (dtype, kv_cache_gib, "
        "enforce_eager, ...); `model`, `max_model_len` and `seed` of the run win, LoRA is on "
        "with `handover = lora`",
    )
    outbound_hosts: list[str] = Field(
        default_factory=lambda: list(LOOPBACK),
        description="hosts `remote` RMs may call, as the server's `outbound_hosts` (jobs "
        "submitted to a server run with the server's)",
    )
    n: int = Field(8, ge=2, description="responses sampled per prompt (paper: 30)")
    pairs_per_prompt: int = Field(3, ge=1, description="top-1 vs ranks 2..k+1 (paper: 10)")
    iterations: int = Field(2, ge=1, description="passes over the prompts")
    batch_size: int = Field(8, ge=1, description="prompts per step (paper: 16)")
    max_tokens: int = Field(64, ge=1, description="response length while sampling")
    temperature: float = Field(0.8, gt=0, le=2.0)
    max_model_len: int = Field(1024, ge=64)
    learning_rate: float = Field(5e-6, gt=0)
    beta: float = Field(0.1, gt=0, description="DPO beta")
    nll_weight: float = Field(1.0, ge=0, description="weight of the chosen response's NLL")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    seed: int = 0

    def storable(self) -> dict[str, Any]:
        """The config as a JSON-ready dict with no token values (the sampler's `api_key`,
        RMs' `options.api_key`): what checkpoints and the job table keep."""
        data: dict[str, Any] = self.model_dump(mode="json")
        data["vllm"].pop("api_key", None)
        for rm in data["reward_models"]:
            rm["options"].pop("api_key", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        """Earlier configs' flat `alpha`, `feature_dim`, `feature_seed` go to their sections
        (a flat key wins over the section's value: flags arrive flat)."""
        if not isinstance(data, dict) or not any(k in data for k in _LEGACY_KEYS):
            return data
        data = dict(data)
        for key, (section, name) in _LEGACY_KEYS.items():
            if key not in data:
                continue
            value = data.pop(key)
            current = data.get(section) or {}
            if isinstance(current, BaseModel):
                current = current.model_dump()
            data[section] = {**current, name: value}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        names = [rm.name for rm in self.reward_models]
        if not names:
            raise ValueError("at least one reward model is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"reward model names must be unique, got {names}")
        if self.selector == "fixed":
            if self.fixed_rm is None and not self.fixed_rm_by_task:
                raise ValueError("selector = 'fixed' needs fixed_rm or fixed_rm_by_task")
            for rm in [self.fixed_rm, *self.fixed_rm_by_task.values()]:
                if rm is not None and rm not in names:
                    raise ValueError(f"fixed RM {rm!r} is not one of {names}")
        elif self.fixed_rm is not None or self.fixed_rm_by_task:
            raise ValueError("fixed_rm and fixed_rm_by_task are only used with selector = 'fixed'")
        if self.selector != "laser" and self.bandit_mode == "per_query":
            raise ValueError("bandit_mode = 'per_query' needs selector = 'laser'")
        if self.bandit_reward == "probe" and self.engine == "vllm" and self.handover == "lora":
            # The probe's margins are the engine's likelihoods of the weights it holds; with
            # the adapter on vLLM's LoRA path (CPU) it has no such likelihoods.
            raise ValueError("bandit_reward = 'probe' needs handover = 'merged' or engine = 'hf'")
        if self.pairs_per_prompt >= self.n:
            raise ValueError(f"pairs_per_prompt ({self.pairs_per_prompt}) must be < n ({self.n})")
        return self

    @property
    def label(self) -> str:
        if self.selector != "fixed":
            return self.selector
        if self.fixed_rm_by_task:
            chosen = sorted(self.fixed_rm_by_task.items())
            return "fixed:" + ",".join(f"{t}={rm}" for t, rm in chosen)
        return f"fixed:{self.fixed_rm}"


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a TOML or JSON file (if given), then `overrides` (flags; a dotted
    key such as `bandit.warmup` sets one field of a section)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:  # a flag for a field of a section, e.g. `bandit.warmup`
            section, name = key.split(".", 1)
            data[section] = {**data.get(section, {}), name: value}
        else:
            data[key] = value
    return TrainConfig.model_validate(data)
