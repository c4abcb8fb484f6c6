"""The bench's in-process alternatives to the server, on the one engine and set of RMs the
bench loads: `engine` (the floor), `engine_rm`, `ensemble`, `naive_loop` and `naive_hf` (see
the package docstring). `sections.Bench` adds the server over HTTP and the bench's sections.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from laser.server.benchmark.config import BenchConfig, timed

if TYPE_CHECKING:
    from laser.server.config import Settings
    from laser.server.services import Services


class Alternatives:
    """The loaded engine and RMs, what the alternatives measured, and the alternatives."""

    def __init__(self, config: BenchConfig, settings: Settings, services: Services) -> None:
        self.cfg, self.settings, self.svc = config, settings, services
        self.engine = services.engine
        self.rms = services.reward_models(settings.reward_models)
        self.hf: Any = None
        # RM scoring wall times (ms) in the side-by-side rounds: the one RM the bandit picked
        # (in process), the ensemble (all RMs at once, as it runs) and each RM within it.
        self.scoring: dict[str, list[float]] = {"one_rm": [], "ensemble": []}
        self.per_rm: dict[str, list[float]] = {name: [] for name in self.rms}
        self._seq = 0
        self.log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)

    def tag(self, text: str) -> str:
        """`text` made unique per call: vLLM's prefix cache must not let one variant reuse
        the prefill of the same prompt sent just before by another (with long documents the
        prefill is most of the cost)."""
        self._seq += 1
        return f"[{self._seq}] {text}"

    def chat(self, question: str) -> str:
        return str(self.engine.render_chat([{"role": "user", "content": question}]))

    def _sampling(self, n: int) -> Any:
        from laser.server.engines.base import Sampling

        return Sampling(n=n, max_tokens=self.cfg.max_tokens, temperature=0.8, top_p=1.0)

    def _query(self, question: str, prompt: str, documents: Sequence[str] = ()) -> Any:
        from laser.server.rms.base import Query

        return Query(question, prompt, list(documents))

    async def _score(self, rm: str, question: str, prompt: str, texts: list[str]) -> list[float]:
        scores: list[float] = await self.rms[rm].score(self._query(question, prompt), texts)
        return scores

    async def engine_only(self, prompt: str, n: int) -> Any:
        return await self.engine.generate(prompt, self._sampling(n))

    async def engine_rm(self, question: str, prompt: str, n: int, rm: str) -> int:
        gen = await self.engine_only(prompt, n)
        texts = [c.text for c in gen.completions]
        ms, scores = await timed(self._score(rm, question, prompt, texts))
        self.scoring["one_rm"].append(ms)
        return int(np.argmax(scores))

    async def ensemble(self, question: str, prompt: str, n: int) -> int:
        from laser.server.rms.builtin import normalized_mean

        gen = await self.engine_only(prompt, n)
        texts = [c.text for c in gen.completions]

        async def one(rm: str) -> list[float]:
            ms, scores = await timed(self._score(rm, question, prompt, texts))
            self.per_rm[rm].append(ms)
            return list(scores)

        ms, lists = await timed(asyncio.gather(*(one(rm) for rm in self.rms)))
        self.scoring["ensemble"].append(ms)
        return int(np.argmax(normalized_mean(lists)))

    async def naive_loop(self, question: str, prompt: str, n: int, rm: str) -> int:
        texts = []
        for _ in range(n):
            gen = await self.engine_only(prompt, 1)
            texts.append(gen.completions[0].text)
        scores = await self._score(rm, question, prompt, texts)
        return int(np.argmax(scores))

    def load_hf(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from laser.server import assets

        path = self.settings.engine.model or str(assets.embedded_model(self.settings.model_cache))
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()  # type: ignore[no-untyped-call]
        torch.manual_seed(0)
        self.hf = (tok, model, torch)

    def _hf_generate(self, prompt: str, n: int) -> list[str]:
        tok, model, torch = self.hf
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        # One torch thread, as vLLM's CPU engine uses for serving: more threads spin-wait
        # against each other on a busy machine (a forward pass got ~10x slower with 2 here).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                out = model.generate(
                    **ids,
                    do_sample=True,
                    temperature=0.8,
                    top_p=1.0,
                    max_new_tokens=self.cfg.max_tokens,
                    num_return_sequences=n,
                    pad_token_id=tok.pad_token_id or tok.eos_token_id,
                )
        finally:
            torch.set_num_threads(threads)
        start = ids["input_ids"].shape[1]
        return [tok.decode(o[start:], skip_special_tokens=True) for o in out]

    async def naive_hf(self, question: str, prompt: str, n: int, rm: str) -> int:
        texts = await asyncio.to_thread(self._hf_generate, prompt, n)
        scores = await self._score(rm, question, prompt, texts)
        return int(np.argmax(scores))

    def variant(self, name: str, question: str, prompt: str, n: int, rm: str) -> Awaitable[Any]:
        """One run of an in-process alternative (not the server)."""
        if name == "engine":
            return self.engine_only(prompt, n)
        if name == "ensemble":
            return self.ensemble(question, prompt, n)
        call = {
            "engine_rm": self.engine_rm,
            "naive_loop": self.naive_loop,
            "naive_hf": self.naive_hf,
        }
        return call[name](question, prompt, n, rm)
