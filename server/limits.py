"""Every limit on what one generation request may ask for, checked in one place before any
work: the sizes of its text (`check_input_size`, also before it waits for a slot: a
megabyte prompt must not queue) and the sampling it asks for (`sampling_limits`). What
depends on tokens (a prompt that does not fit the model's context) is known only once the
prompt is templated: `prompts.prepare` says so then.

    check_input_size(GenerateRequest(prompt="x" * 10**6), settings)  # BadRequestError
    n, max_tokens = sampling_limits(GenerateRequest(prompt="Hi", n=99), settings)  # 400
"""

from __future__ import annotations

from laser.server.config import Settings
from laser.server.errors import BadRequestError
from laser.server.protocol import GenerateRequest


def sampling_limits(req: GenerateRequest, settings: Settings) -> tuple[int, int]:
    """(n, max_tokens) of a request, defaults filled in; 400 when over the server's limits."""
    n = req.n or settings.n_default
    if n > settings.n_max:
        raise BadRequestError(f"n={n} is above this server's limit of {settings.n_max}", param="n")
    max_tokens = req.max_tokens or settings.max_tokens_default
    if max_tokens > settings.max_tokens_limit:
        raise BadRequestError(
            f"max_tokens={max_tokens} is above this server's limit of {settings.max_tokens_limit}",
            param="max_tokens",
        )
    return n, max_tokens


def check_input_size(req: GenerateRequest, settings: Settings) -> None:
    """Refuse (400 `input_too_large`, naming the field) a prompt, messages, reference or
    documents over the limits.

    Checked before queueing: tokenizing megabytes of text would stall the event loop for
    everyone, and such a request could never fit the model anyway (documents are cut to fit,
    but only up to `max_document_chars`).

        check_input_size(GenerateRequest(prompt="x" * 10**6), settings)  # BadRequestError
    """
    if req.messages is not None:
        if len(req.messages) > settings.max_messages:
            raise BadRequestError(
                f"{len(req.messages)} messages; this server takes at most "
                f"{settings.max_messages} (max_messages)",
                param="messages",
                code="input_too_large",
            )
        prompt_chars, param = sum(len(m.content) for m in req.messages), "messages"
    else:
        prompt_chars, param = len(req.prompt or ""), "prompt"
    if prompt_chars > settings.max_prompt_chars:
        raise BadRequestError(
            f"{param} has {prompt_chars} characters; this server takes at most "
            f"{settings.max_prompt_chars} (max_prompt_chars)",
            param=param,
            code="input_too_large",
        )
    if req.reference is not None and len(req.reference) > settings.max_reference_chars:
        raise BadRequestError(
            f"reference has {len(req.reference)} characters; this server takes at most "
            f"{settings.max_reference_chars} (max_reference_chars)",
            param="reference",
            code="input_too_large",
        )
    docs = [req.document] if req.document is not None else list(req.documents or [])
    if len(docs) > settings.max_documents:
        raise BadRequestError(
            f"{len(docs)} documents; this server takes at most {settings.max_documents} "
            "(max_documents)",
            param="documents",
            code="input_too_large",
        )
    doc_chars = sum(len(d) for d in docs)
    if doc_chars > settings.max_document_chars:
        raise BadRequestError(
            f"the documents have {doc_chars} characters together; this server takes at most "
            f"{settings.max_document_chars} (max_document_chars)",
            param="document" if req.document is not None else "documents",
            code="input_too_large",
        )
