"""Reward models: score the n candidates of one query in one batch.

Built-in (the embedded default), chosen to judge differently so that choosing matters:
- `loglik`: mean token log-likelihood of the candidate under the policy LM (what the LASeR
  code uses). Favours fluent, typical text.
- `agreement`: extracts each candidate's final answer (number, choice letter or short span)
  and scores agreement with the other candidates (self-consistency), or with `reference`
  when the request gives one. Favours the majority answer.
- `relevance`: embedding similarity of the candidate to the question and, for QA, to the
  best-matching chunk of the document(s). Favours on-topic, grounded text.
- `arith`: an arithmetic verifier (`verifiers.check_arithmetic`): recomputes the arithmetic a
  candidate states and checks that its final number follows from a correct step. Favours
  worked answers whose steps are right; with nothing to check, candidates tie.
- `grounding`: a grounding checker for document QA (`verifiers.grounding`): the share of the
  candidate's new words found in the passages that best match the question (BM25). Favours
  answers the documents support; without documents, candidates tie.
- `judge`: the serving LM asked whether the answer is correct (log p(Yes) - log p(No)). The
  generalist.

Ties (equal scores) go to the lowest candidate index, i.e. the first sample.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from laser.server import answers, verifiers
from laser.server.config import RewardModelSpec
from laser.server.engine import Engine
from laser.server.featurize import SentenceEncoder
from laser.server.prompts import format_documents


@dataclass(frozen=True)
class Query:
    """What an RM may look at besides the candidates."""

    question: str
    prompt: str
    documents: list[str] = field(default_factory=list)
    task: str | None = None
    reference: str | None = None

    @property
    def user_content(self) -> str:
        """The question, inside the documented document template when there are documents."""
        return format_documents(self.question, self.documents) if self.documents else self.question


class RewardModel(Protocol):
    name: str
    kind: str

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]: ...


class LogLikelihoodRM:
    kind = "loglik"

    def __init__(self, name: str, engine: Engine) -> None:
        self.name, self.engine = name, engine

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        lls = await self.engine.loglikelihoods(query.prompt, responses)
        # An empty candidate has no likelihood: rank it last but keep the score finite.
        return [ll if np.isfinite(ll) else -100.0 for ll in lls]


class AgreementRM:
    kind = "agreement"

    def __init__(self, name: str, use_reference: bool = True) -> None:
        self.name, self.use_reference = name, use_reference

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        kind = answers.answer_kind(query.task, query.reference)
        if self.use_reference and query.reference is not None:
            return [float(answers.matches(r, query.reference, kind)) for r in responses]
        extracted = [answers.extract(r, kind) for r in responses]
        n = len(responses)
        if n == 1:
            return [float(extracted[0] is not None)]
        if kind == "span":
            scores = []
            for i, a in enumerate(extracted):
                others = [
                    answers.token_f1(a or "", b or "") for j, b in enumerate(extracted) if j != i
                ]
                scores.append(float(np.mean(others)) if a else 0.0)
            return scores
        counts = Counter(a for a in extracted if a is not None)
        return [(counts[a] - 1) / (n - 1) if a is not None else 0.0 for a in extracted]


class RelevanceRM:
    kind = "relevance"

    def __init__(
        self, name: str, encoder: SentenceEncoder, chunk_chars: int = 600, max_chunks: int = 48
    ) -> None:
        self.name, self.encoder = name, encoder
        self.chunk_chars, self.max_chunks = chunk_chars, max_chunks

    def _chunks(self, documents: Sequence[str]) -> list[str]:
        chunks = [
            d[i : i + self.chunk_chars]
            for d in documents
            for i in range(0, len(d), self.chunk_chars)
        ]
        if len(chunks) > self.max_chunks:  # spread evenly over long documents
            step = len(chunks) / self.max_chunks
            chunks = [chunks[int(i * step)] for i in range(self.max_chunks)]
        return chunks

    def _score(self, query: Query, responses: Sequence[str]) -> list[float]:
        chunks = self._chunks(query.documents)
        emb = self.encoder.encode([query.question, *responses, *chunks])
        q, r, c = emb[0], emb[1 : 1 + len(responses)], emb[1 + len(responses) :]
        to_question = r @ q
        if len(c) == 0:
            return [float(v) for v in to_question]
        grounded = (r @ c.T).max(axis=1)
        return [float(v) for v in 0.5 * to_question + 0.5 * grounded]

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        return await asyncio.to_thread(self._score, query, responses)


class ArithmeticVerifierRM:
    kind = "arith"
    version = 1  # bump when the scoring changes (evaluation caches key on it)

    def __init__(self, name: str) -> None:
        self.name = name

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        return [verifiers.check_arithmetic(query.question, r).score for r in responses]


class GroundingRM:
    kind = "grounding"
    version = 1  # bump when the scoring changes (evaluation caches key on it)

    def __init__(self, name: str, top_k: int = 3) -> None:
        self.name, self.top_k = name, top_k

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        if not query.documents:  # nothing to ground in: every candidate ties
            return [0.0 for _ in responses]
        return await asyncio.to_thread(
            verifiers.grounding, query.question, query.documents, responses, self.top_k
        )


def normalized_mean(score_lists: Sequence[Sequence[float]]) -> list[float]:
    """The score ensemble: each RM's scores min-max normalised over the candidates, then
    averaged per candidate (an RM that scores all candidates alike contributes 0.5).

    >>> normalized_mean([[0.0, 10.0], [3.0, 1.0]])
    [0.5, 0.5]
    """
    norm = []
    for scores in score_lists:
        s = np.asarray(scores, dtype=float)
        span = float(s.max() - s.min()) if len(s) else 0.0
        norm.append((s - s.min()) / span if span > 0 else np.full(len(s), 0.5))
    return [float(v) for v in np.mean(norm, axis=0)]


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

    def texts(self, query: Query, responses: Sequence[str]) -> list[str]:
        return rm_texts(self.tokenizer, query, responses)

    def _score(self, query: Query, responses: Sequence[str]) -> list[float]:
        torch = self._torch
        texts = self.texts(query, responses)
        out: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                out.extend(self.model(**batch).logits[:, 0].float().cpu().tolist())
        return out

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        return await asyncio.to_thread(self._score, query, responses)


JUDGE_TEMPLATE = (
    "{user}\n\nProposed answer: {response}\n\nIs the proposed answer correct? Reply with Yes or No."
)


class JudgeRM:
    """An LM asked whether each answer is right: score = log p(Yes) - log p(No).

    Uses the serving engine's LM (the policy by default), one likelihood request per
    candidate and verdict, all batched by the engine.
    """

    kind = "judge"

    def __init__(self, name: str, engine: Engine) -> None:
        self.name, self.engine = name, engine

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        user = query.user_content

        async def one(response: str) -> float:
            content = JUDGE_TEMPLATE.format(user=user, response=response)
            prompt = self.engine.render_chat([{"role": "user", "content": content}])
            yes, no = await self.engine.loglikelihoods(prompt, ["Yes", "No"])
            return yes - no

        return list(await asyncio.gather(*(one(r) for r in responses)))


class RemoteRM:
    """An RM behind HTTP, plain JSON protocol (documented in the README):

        POST <url>  {"question", "prompt", "documents", "task", "responses": [...]}
        200         {"scores": [float, ...]}   one per response, same order

    Timeouts and retries (on connection errors, 429 and 5xx) are per call.
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
    ) -> None:
        import httpx

        if protocol not in ("json", "vllm_classify"):
            raise ValueError(f"protocol must be json or vllm_classify, got {protocol!r}")
        self.name, self.url, self.retries = name, url, retries
        self.protocol, self.model = protocol, model
        self.tokenizer: Any = None
        if tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(timeout=timeout, headers=headers)
        self._httpx = httpx

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
                if (r.status_code != 429 and r.status_code < 500) or attempt == self.retries:
                    raise RuntimeError(f"remote RM {self.name} answered {r.status_code}")
            await asyncio.sleep(0.2 * 2**attempt)
        raise RuntimeError("unreachable")


def build_reward_model(spec: RewardModelSpec, *, engine: Engine, encoder: SentenceEncoder) -> Any:
    """Instantiate the RM a config entry describes."""
    opts = dict(spec.options)
    if spec.kind == "loglik":
        return LogLikelihoodRM(spec.name, engine)
    if spec.kind == "agreement":
        return AgreementRM(spec.name, use_reference=bool(opts.get("use_reference", True)))
    if spec.kind == "relevance":
        return RelevanceRM(spec.name, encoder, **opts)
    if spec.kind == "judge":
        return JudgeRM(spec.name, engine)
    if spec.kind == "arith":
        return ArithmeticVerifierRM(spec.name)
    if spec.kind == "grounding":
        return GroundingRM(spec.name, **opts)
    if spec.kind == "remote":
        if "url" not in opts:
            raise ValueError("a `remote` reward model needs options.url")
        return RemoteRM(spec.name, **opts)
    if spec.kind == "vllm_pooling":
        if "path" not in opts:
            raise ValueError("a `vllm_pooling` reward model needs options.path")
        return VLLMPoolingRM(spec.name, **opts)
    if spec.kind == "hf":
        if "path" not in opts:
            raise ValueError("an `hf` reward model needs options.path (a model folder)")
        return HFRewardModel(spec.name, **opts)
    raise ValueError(f"unknown reward model kind {spec.kind!r}")
