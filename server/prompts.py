"""The documented prompt templates for long-context QA, shared by the pipeline and RMs."""

from __future__ import annotations

from collections.abc import Sequence

# The documented long-context QA template (one document, or several numbered ones).
DOC_TEMPLATE = "Read the document and answer the question.\n\n{docs}\n\nQuestion: {question}"
MULTI_DOC_TEMPLATE = "Read the documents and answer the question.\n\n{docs}\n\nQuestion: {question}"
TRUNCATION_MARK = " [...]"


def format_documents(question: str, documents: Sequence[str]) -> str:
    if len(documents) == 1:
        return DOC_TEMPLATE.format(docs=f"Document:\n{documents[0]}", question=question)
    docs = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(documents))
    return MULTI_DOC_TEMPLATE.format(docs=docs, question=question)
