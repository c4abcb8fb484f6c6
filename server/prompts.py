"""Prompts: the documented templates for long-context QA and the fitting of a request into
the model's context. Functions of the request and the engine only (no store, no bandit), so
serving, evaluation and benchmarks render prompts the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from laser.server.engines.base import Engine
from laser.server.errors import BadRequestError
from laser.server.protocol import GenerateRequest

# The documented long-context QA template (one document, or several numbered ones).
DOC_TEMPLATE = "Read the document and answer the question.\n\n{docs}\n\nQuestion: {question}"
MULTI_DOC_TEMPLATE = "Read the documents and answer the question.\n\n{docs}\n\nQuestion: {question}"
TRUNCATION_MARK = " [...]"


def format_documents(question: str, documents: Sequence[str]) -> str:
    if len(documents) == 1:
        return DOC_TEMPLATE.format(docs=f"Document:\n{documents[0]}", question=question)
    docs = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(documents))
    return MULTI_DOC_TEMPLATE.format(docs=docs, question=question)


@dataclass
class Prepared:
    question: str
    documents: list[str]
    prompt: str
    prompt_tokens: int
    truncated: bool


def prepare(
    req: GenerateRequest, engine: Engine, max_tokens: int, document_policy: str = "truncate"
) -> Prepared:
    """The prompt a request turns into: chat template, document template, and documents cut
    to fit `engine.max_model_len - max_tokens` (`truncate`) or a 400 (`reject`); the
    request's `document_policy` wins over the server's."""
    docs = [req.document] if req.document is not None else list(req.documents or [])
    if req.messages is not None:
        msgs = [m.model_dump() for m in req.messages]
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        if not users:
            raise BadRequestError("`messages` needs a user message", param="messages")
        question = msgs[users[-1]]["content"]
    else:
        assert req.prompt is not None
        question = req.prompt
        msgs = [{"role": "user", "content": question}]
        users = [0]
    budget = engine.max_model_len - max_tokens
    policy = req.document_policy or document_policy
    truncated = False
    for _ in range(4):
        if docs:
            msgs[users[-1]] = {"role": "user", "content": format_documents(question, docs)}
        if req.raw and req.prompt is not None and not docs:
            prompt = question
        else:
            prompt = engine.render_chat(msgs)
        n_tokens = engine.count_tokens(prompt)
        excess = n_tokens - budget
        if excess <= 0:
            return Prepared(question, docs, prompt, n_tokens, truncated)
        doc_tokens = [engine.count_tokens(d) for d in docs]
        if not docs or policy == "reject" or sum(doc_tokens) <= excess:
            what = "prompt with its documents" if docs else "prompt"
            raise BadRequestError(
                f"the {what} is {n_tokens} tokens; with max_tokens={max_tokens} the "
                f"model's context of {engine.max_model_len} tokens allows "
                f"{budget}. Shorten it, lower max_tokens"
                + (", or send document_policy='truncate'." if docs else "."),
                param="document" if docs else "prompt",
                code="context_length_exceeded",
            )
        docs = _truncate(engine, docs, doc_tokens, excess)
        truncated = True
    raise BadRequestError(
        "could not fit the documents into the context",
        param="document",
        code="context_length_exceeded",
    )


def _truncate(engine: Engine, docs: list[str], doc_tokens: list[int], excess: int) -> list[str]:
    """Cut every document's tail in proportion to its length (documented policy)."""
    total = sum(doc_tokens)
    keep_ratio = max(0.0, (total - excess - 16 * len(docs)) / total)
    out = []
    for d, t in zip(docs, doc_tokens, strict=True):
        keep = int(t * keep_ratio)
        if keep >= t:
            out.append(d)
            continue
        ids = engine.tokenizer(d, add_special_tokens=False)["input_ids"]
        out.append(engine.tokenizer.decode(ids[:keep]) + TRUNCATION_MARK)
    return out
