"""The scale-out engine: any OpenAI-compatible completions server (a vLLM server, or a fleet
behind a load balancer) over httpx."""

from __future__ import annotations

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
from laser.server.outbound import LOOPBACK, HostNotAllowedError, check_url, guarded_client


class RemoteOpenAIEngine(EngineBase):
    """Any OpenAI-compatible completions server (a vLLM server, or a fleet behind a load
    balancer) over httpx: the scale-out path. n candidates come from one `/v1/completions`
    call; likelihoods from `echo` + `logprobs` on token-id prompts.

    The tokenizer is loaded locally (a model folder) for token counting and chat rendering.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str,
        tokenizer: str,
        max_model_len: int = 2048,
        api_key: str | None = None,
        timeout: float = 300.0,
        allowed_hosts: Sequence[str] = LOOPBACK,
    ) -> None:
        import httpx
        from transformers import AutoTokenizer

        check_url(url, allowed_hosts)
        self.model_name = model
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = guarded_client(
            allowed_hosts, base_url=url.rstrip("/"), timeout=timeout, headers=headers
        )
        self._httpx = httpx

    supports_adapters = False
    dtype: str | None = None  # the remote server's choice; not known here
    dtype_reason: str | None = None

    async def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = await self._http.post("/v1/completions", json={"model": self.model_name, **body})
        except HostNotAllowedError as exc:  # a redirect off the allowed hosts
            raise EngineError(f"remote engine: {exc}") from exc
        except self._httpx.HTTPError as exc:
            raise EngineError(f"remote engine unreachable: {type(exc).__name__}: {exc}") from exc
        if r.status_code != 200:
            raise EngineError(f"remote engine answered {r.status_code}: {r.text[:300]}")
        data: dict[str, Any] = r.json()
        return data

    async def generate(
        self, prompt: str, sampling: Sampling, adapter: Adapter | None = None
    ) -> Generation:
        if adapter is not None:
            raise EngineError("the remote engine serves adapters by name: load it there")
        data = await self._complete(
            {
                "prompt": prompt,
                "n": sampling.n,
                "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "stop": sampling.stop,
            }
        )
        choices = sorted(data["choices"], key=lambda c: c["index"])
        return Generation(
            completions=[
                Completion(c["text"], c.get("finish_reason"), self.count_tokens(c["text"]))
                for c in choices
            ],
            prompt_tokens=int(data.get("usage", {}).get("prompt_tokens", 0)),
        )

    async def loglikelihoods(self, prefix: str, continuations: Sequence[str]) -> list[float]:
        prefix_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        prompts, starts = [], []
        for text in continuations:
            cont = self.tokenizer(text, add_special_tokens=False)["input_ids"] or [0]
            ids = (prefix_ids + cont)[-(self.max_model_len - 1) :]
            prompts.append(ids)
            starts.append(len(ids) - len(cont))
        data = await self._complete(
            {"prompt": prompts, "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": 0}
        )
        out = [float("-inf")] * len(prompts)
        for choice in data["choices"]:
            i = choice["index"]
            lps = choice["logprobs"]["token_logprobs"][starts[i] : len(prompts[i])]
            vals = [v for v in lps if v is not None]
            if vals and any(continuations[i]):
                out[i] = sum(vals) / len(vals)
        return out

    async def aclose(self) -> None:
        await self._http.aclose()

    def shutdown(self) -> None:
        pass
