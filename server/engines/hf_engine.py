"""A transformers model behind the serving `Engine` protocol.

Training uses it when vLLM is not wanted (tests on a tiny model, or `engine = "hf"`): the
policy being trained IS the model that samples, so generation always uses the current
weights with no hand-over. Likelihood scoring (the `loglik` and `judge` RMs) runs under
`scoring_context`, e.g. peft's `disable_adapter`, so RMs judge with the frozen base model.

>>> # engine = HFEngine(model, tokenizer, name="tiny", max_model_len=512)
>>> # [gen] = await engine.generate_batch(["Hi"], Sampling(n=4, max_tokens=8))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from laser.server.engines.base import (
    Adapter,
    Completion,
    EngineBase,
    EngineError,
    Generation,
    Sampling,
)


class HFEngine(EngineBase):
    supports_adapters = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_model_len: int = 1024,
        scoring_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.model, self.tokenizer = model, tokenizer
        self.model_name, self.max_model_len = name, max_model_len
        self._scoring_context = scoring_context or contextlib.nullcontext
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    async def generate(
        self, prompt: str, sampling: Sampling, adapter: Adapter | None = None
    ) -> Generation:
        return (await self.generate_batch([prompt], sampling, adapter))[0]

    async def generate_batch(
        self, prompts: Sequence[str], sampling: Sampling, adapter: Adapter | None = None
    ) -> list[Generation]:
        """One `model.generate` call for the whole batch (left-padded, n per prompt)."""
        if adapter is not None:
            raise EngineError("HFEngine generates with the model it holds; adapters do not apply")
        torch, tok = self._torch, self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        enc = enc.to(self.device)
        sample = sampling.temperature > 0
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                top_k=None,
                max_new_tokens=sampling.max_tokens,
                num_return_sequences=sampling.n,
                pad_token_id=tok.pad_token_id,
            )
        self.model.train(was_training)
        width = enc["input_ids"].shape[1]
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        gens = []
        for i in range(len(prompts)):
            comps = []
            for j in range(sampling.n):
                ids = out[i * sampling.n + j, width:].tolist()
                finish = "length"
                if tok.eos_token_id in ids:
                    ids, finish = ids[: ids.index(tok.eos_token_id)], "stop"
                text = tok.decode(ids, skip_special_tokens=True)
                for s in sampling.stop or []:
                    if s in text:
                        text, finish = text[: text.index(s)], "stop"
                comps.append(Completion(text, finish, len(ids)))
            gens.append(Generation(comps, int(prompt_lens[i])))
        return gens

    async def loglikelihoods(self, prefix: str, continuations: Sequence[str]) -> list[float]:
        return self.loglikelihoods_sync(prefix, continuations)

    def loglikelihoods_sync(self, prefix: str, continuations: Sequence[str]) -> list[float]:
        """Mean log-probability per token of each continuation after `prefix` (blocking)."""
        torch, tok = self._torch, self.tokenizer
        prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
        out = []
        with torch.no_grad(), self._scoring_context():
            for text in continuations:
                cont = tok(text, add_special_tokens=False)["input_ids"]
                if not cont:
                    out.append(float("-inf"))
                    continue
                ids = (prefix_ids + cont)[-self.max_model_len :]
                x = torch.tensor([ids], device=self.device)
                logp = self.model(input_ids=x).logits[0, :-1].float().log_softmax(-1)
                start = len(ids) - len(cont)
                target = x[0, start:]
                lp = logp[start - 1 :].gather(-1, target[:, None]).squeeze(-1)
                out.append(float(lp.mean()))
        return out

    def shutdown(self) -> None:
        pass
