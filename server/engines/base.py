"""What every generation engine offers, and the values that cross it: the `Engine` protocol,
`Sampling`, `Generation`, `Adapter`, `EngineError`, and the chat/token helpers engines share.
Engines (`vllm_engine.py`, `hf_engine.py`, `remote_engine.py`) import this module; it
imports none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Sampling:
    n: int
    max_tokens: int
    temperature: float = 0.8
    top_p: float = 1.0
    stop: list[str] | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    tokens: int
    sampled_ids: list[int] | None = None
    """The token ids it was sampled as (end-of-sequence dropped), when the engine kept their
    logprobs: with `sampled_logprob`, what lets `keep_samples` restore them later."""
    sampled_logprob: float | None = None
    """Mean logprob of `sampled_ids` under the model (raw, before temperature)."""


@dataclass(frozen=True)
class Generation:
    completions: list[Completion]
    prompt_tokens: int


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter folder (peft format) to generate with.

    `id` must change whenever the weights in `path` change: vLLM caches adapters by id.
    """

    name: str
    path: str
    id: int


class EngineError(RuntimeError):
    """The engine failed a request (not the caller's fault)."""


class Engine(Protocol):
    model_name: str
    max_model_len: int
    supports_adapters: bool
    tokenizer: Any
    """The policy's tokenizer (transformers), for token counts and the chat template."""

    def count_tokens(self, text: str) -> int: ...

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str: ...

    async def generate(
        self, prompt: str, sampling: Sampling, adapter: Adapter | None = None
    ) -> Generation: ...

    async def generate_batch(
        self, prompts: Sequence[str], sampling: Sampling, adapter: Adapter | None = None
    ) -> list[Generation]:
        """n samples for each prompt, submitted together (the engine batches them)."""
        ...

    async def loglikelihoods(self, prefix: str, continuations: Sequence[str]) -> list[float]:
        """Mean log-probability per token of each continuation after `prefix`."""
        ...

    async def aclose(self) -> None:
        """Close what the engine opened on the event loop (HTTP clients); then `shutdown`."""
        ...

    def shutdown(self) -> None: ...


class EngineBase:
    """What the engines share: `count_tokens` and `render_chat` from the transformers
    tokenizer in `self.tokenizer`, and `generate_batch` as concurrent `generate` calls."""

    tokenizer: Any

    async def generate(
        self, prompt: str, sampling: Sampling, adapter: Adapter | None = None
    ) -> Generation:
        raise NotImplementedError

    async def generate_batch(
        self, prompts: Sequence[str], sampling: Sampling, adapter: Adapter | None = None
    ) -> list[Generation]:
        # Submitted together, the prompts run as one continuous batch in the engine.
        return list(await asyncio.gather(*(self.generate(p, sampling, adapter) for p in prompts)))

    async def aclose(self) -> None:
        return None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if not self.tokenizer.chat_template:
            return "\n\n".join(m["content"] for m in messages) + "\n\n"
        text = self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return str(text)
