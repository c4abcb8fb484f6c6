"""Reward models backed by a model of their own: a transformers sequence-classification RM
(`hf`), the same kind of RM on vLLM's pooling runner in this process (`vllm_pooling`), and an
RM behind HTTP (`remote`). Heavy imports happen when one is built."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from laser.server.outbound import LOOPBACK, check_url, guarded_client
from laser.server.rms.base import Query, RMInputError
from laser.server.rms.coalesce import Coalescer

INPUT_REFUSED = frozenset({400, 413, 422})
"""A remote RM's answers that blame the request (too large, malformed for it), not the RM:
the request falls back to the next RM and the RM's circuit is left alone. 401, 403, 404 and
other 4xx mean the RM is misconfigured and count as its failures."""


def rm_texts(tokenizer: Any, query: Query, responses: Sequence[str]) -> list[str]:
    """(question [+ documents], response) pairs in the RM's own chat template, if it has one."""
    user = query.user_content
    if tokenizer is not None and tokenizer.chat_template:
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": user}, {"role": "assistant", "content": r}],
                tokenize=False,
            )
            for r in responses
        ]
    return [f"{user}\n\n{r}" for r in responses]


class VLLMPoolingRM:
    """A sequence-classification RM served by vLLM's pooling runner in this process
    (`runner="pooling"`, classify with the activation off: raw scores)."""

    kind = "vllm_pooling"

    def __init__(self, name: str, path: str, max_model_len: int = 2048) -> None:
        import threading

        from transformers import AutoTokenizer
        from vllm import LLM

        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.llm = LLM(
            model=path, runner="pooling", enforce_eager=True, max_model_len=max_model_len
        )
        self._lock = threading.Lock()  # the sync LLM is not re-entrant

    def _score(self, query: Query, responses: Sequence[str]) -> list[float]:
        from vllm import PoolingParams

        texts = rm_texts(self.tokenizer, query, responses)
        with self._lock:
            outs = self.llm.encode(
                texts,
                pooling_task="classify",
                use_tqdm=False,
                pooling_params=PoolingParams(use_activation=False),
            )
        return [float(o.outputs.data.reshape(-1)[0]) for o in outs]

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        return await asyncio.to_thread(self._score, query, responses)


class HFRewardModel:
    """A transformers sequence-classification RM (RewardBench kind), batched, CPU or GPU.

    The (question, response) pair goes through the RM's own chat template when it has one
    (user turn, assistant turn); the first logit is the score.
    """

    kind = "hf"

    def __init__(
        self, name: str, path: str, device: str = "cpu", batch_size: int = 8, max_length: int = 2048
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name, self.device = name, device
        self.batch_size, self.max_length = batch_size, max_length
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        # Concurrent requests' candidates are scored together, one forward at a time.
        self.batcher: Coalescer[str, float] = Coalescer(self._score_texts, max_items=64)

    def texts(self, query: Query, responses: Sequence[str]) -> list[str]:
        return rm_texts(self.tokenizer, query, responses)

    def _score_texts(self, texts: list[str]) -> list[float]:
        """One score per text, in order; batches of `batch_size` texts of similar length (by
        characters), so that little of a batch is padding."""
        torch = self._torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [0.0] * len(texts)
        with torch.inference_mode():
            for i in range(0, len(order), self.batch_size):
                chunk = order[i : i + self.batch_size]
                batch = self.tokenizer(
                    [texts[j] for j in chunk],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                scores = self.model(**batch).logits[:, 0].float().cpu().tolist()
                for j, value in zip(chunk, scores, strict=True):
                    out[j] = float(value)
        return out

    def _score(self, query: Query, responses: Sequence[str]) -> list[float]:
        return self._score_texts(self.texts(query, responses))

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        return await self.batcher.submit(self.texts(query, responses))


class RemoteRM:
    """An RM behind HTTP, plain JSON protocol (documented in docs/reward-models.md):

        POST <url>  {"question", "prompt", "documents", "task", "responses": [...]}
        200         {"scores": [float, ...]}   one per response, same order

    Timeouts and retries (on connection errors, 429 and 5xx) are per call. Only hosts in
    `allowed_hosts` (the server's `outbound_hosts`) are called, redirects included.
    """

    kind = "remote"

    def __init__(
        self,
        name: str,
        url: str,
        timeout: float = 30.0,
        retries: int = 2,
        api_key: str | None = None,
        protocol: str = "json",
        model: str | None = None,
        tokenizer: str | None = None,
        allowed_hosts: Sequence[str] = LOOPBACK,
    ) -> None:
        import httpx

        check_url(url, allowed_hosts)  # HostNotAllowedError: the caller's 403
        if protocol not in ("json", "vllm_classify"):
            raise ValueError(f"protocol must be json or vllm_classify, got {protocol!r}")
        self.name, self.url, self.retries = name, url, retries
        self.protocol, self.model = protocol, model
        self.tokenizer: Any = None
        if tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = guarded_client(allowed_hosts, timeout=timeout, headers=headers)
        self._httpx = httpx

    async def aclose(self) -> None:
        await self._http.aclose()

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        body: dict[str, Any]
        if self.protocol == "vllm_classify":
            # vLLM's /classify with the activation off (raw scores); the RM's chat template
            # is applied here when its tokenizer is configured.
            texts = rm_texts(self.tokenizer, query, responses)
            body = {"model": self.model, "input": texts, "use_activation": False}
        else:
            body = {
                "question": query.question,
                "prompt": query.prompt,
                "documents": query.documents,
                "task": query.task,
                "responses": list(responses),
            }
        for attempt in range(self.retries + 1):
            try:
                r = await self._http.post(self.url, json=body)
            except self._httpx.TransportError:
                if attempt == self.retries:
                    raise
            else:
                if r.status_code == 200 and self.protocol == "vllm_classify":
                    data = sorted(r.json()["data"], key=lambda d: d["index"])
                    return [float(d["probs"][0]) for d in data]
                if r.status_code == 200:
                    scores = r.json().get("scores")
                    if not isinstance(scores, list):
                        raise ValueError(f"remote RM {self.name} sent no `scores` list")
                    return [float(s) for s in scores]
                if r.status_code in INPUT_REFUSED:  # the RM is fine; it refuses this input
                    raise RMInputError(f"remote RM {self.name} refused the input ({r.status_code})")
                if (r.status_code != 429 and r.status_code < 500) or attempt == self.retries:
                    raise RuntimeError(f"remote RM {self.name} answered {r.status_code}")
            await asyncio.sleep(0.2 * 2**attempt)
        raise RuntimeError("unreachable")
