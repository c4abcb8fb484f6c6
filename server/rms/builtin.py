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

import numpy as np

from laser.server import answers
from laser.server.engines.base import Engine
from laser.server.featurize import SentenceEncoder
from laser.server.rms import verifiers
from laser.server.rms.base import Query, input_safe


class LogLikelihoodRM:
    kind = "loglik"
    cost_ms = 2.0  # from the sampled tokens' kept logprobs; an engine pass costs more (measured)

    def __init__(self, name: str, engine: Engine) -> None:
        self.name, self.engine = name, engine

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        lls = await self.engine.loglikelihoods(query.prompt, responses)
        # An empty candidate has no likelihood: rank it last but keep the score finite.
        return [ll if np.isfinite(ll) else -100.0 for ll in lls]


class AgreementRM:
    kind = "agreement"
    cost_ms = 2.0

    def __init__(self, name: str, use_reference: bool = True) -> None:
        self.name, self.use_reference = name, use_reference

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        # Text work proportional to the input (a reference may be large): off the loop.
        return await asyncio.to_thread(input_safe, self.name, self._score, query, responses)

    def _score(self, query: Query, responses: Sequence[str]) -> list[float]:
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
    cost_ms = 50.0  # a sentence-encoder pass per candidate

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
    cost_ms = 1.0
    version = 2  # bump when the scoring changes (evaluation caches key on it)

    def __init__(self, name: str) -> None:
        self.name = name

    def _score(self, query: Query, responses: Sequence[str]) -> list[float]:
        return [verifiers.check_arithmetic(query.question, r).score for r in responses]

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        return await asyncio.to_thread(input_safe, self.name, self._score, query, responses)


class GroundingRM:
    kind = "grounding"
    cost_ms = 2.0
    version = 2  # bump when the scoring changes (evaluation caches key on it)

    def __init__(self, name: str, top_k: int = 3) -> None:
        self.name, self.top_k = name, top_k

    async def score(self, query: Query, responses: Sequence[str]) -> list[float]:
        if not query.documents:  # nothing to ground in: every candidate ties
            return [0.0 for _ in responses]
        return await asyncio.to_thread(
            input_safe,
            self.name,
            verifiers.grounding,
            query.question,
            query.documents,
            responses,
            self.top_k,
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
