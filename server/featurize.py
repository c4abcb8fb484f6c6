"""Query -> small context vector for the bandit.

Two contexts (`[featurizer] context`):

- `kind` (default): the kind of query as a one-hot block (`math`, `mc`, `qa`, `general`;
  from the request's `task` hint when it names one, otherwise read off the query itself:
  documents -> `qa`, lettered options -> `mc`, numbers with arithmetic -> `math`), then
  `embed_dims` seeded random directions of the MiniLM sentence embedding, then document
  present, log length and a bias: 4 + embed_dims + 3 features. A linear bandit learns a
  context this small in tens of rewarded decisions per arm; the one-hot block is also the
  region the bandit's warm start counts tries by (`regions`).
- `projection` (the earlier default, kept as an ablation): the 384-d MiniLM embedding
  projected to `dim` by a seeded Gaussian matrix, then the same three features.

Projections depend only on the seed, so a restarted server computes the same contexts and
its restored bandit predicts as before.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from laser.server.kinds import KINDS

if TYPE_CHECKING:
    from laser.server.config import FeaturizerSettings


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings with transformers (CPU or GPU)."""

    def __init__(self, path: str | Path, device: str = "cpu", max_length: int = 256) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(device).eval()
        self.device = device
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()  # one forward at a time: no CPU oversubscription

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        torch = self._torch
        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[i : i + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out.append(pooled.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim))
        emb: np.ndarray = np.concatenate(out).astype(np.float64)
        return emb


N_EXTRA = 3


_TASK_KINDS = {
    "math": "math",
    "arithmetic": "math",
    "gsm8k": "math",
    "mc": "mc",
    "gpqa": "mc",
    "mmlu": "mc",
    "multiple_choice": "mc",
    "qa": "qa",
    "longqa": "qa",
    "long_qa": "qa",
    "multidoc_qa": "qa",
    "rag": "qa",
    "general": "general",
    "chat": "general",
}
_OPTION_LINE = re.compile(r"^\s*\(?[A-Da-d][).:]\s+\S", re.MULTILINE)
_ARITH = re.compile(r"\d\s*[-+*/x×÷]\s*\d")
_MATH_WORDS = re.compile(
    r"\b(how (many|much)|total|sum|difference|product|left|remain\w*|more|fewer|less|each|"
    r"per|cost\w*|price|pay\w*|percent|calculate|compute|solve|twice|half|times)\b",
    re.IGNORECASE,
)


def query_kind(question: str, has_document: bool, task: str | None = None) -> str:
    """The kind of query: the `task` hint when it names a known kind, else read off the query.

    >>> query_kind("What is 12 + 7?", False), query_kind("Who is Mara?", True)
    ('math', 'qa')
    >>> query_kind("Pick one:\nA) red\nB) blue\nC) green", False, task="chat")
    'general'
    """
    if task:
        hinted = _TASK_KINDS.get(task.strip().lower())
        if hinted is not None:
            return hinted
    if has_document:
        return "qa"
    if len(_OPTION_LINE.findall(question)) >= 3:
        return "mc"
    if _ARITH.search(question) or (
        any(ch.isdigit() for ch in question) and _MATH_WORDS.search(question)
    ):
        return "math"
    return "general"


class Featurizer:
    """`features(question, has_document, task)` -> the context vector (see the module doc).

    >>> # Featurizer(encoder, context="kind", embed_dims=4).dim == 11
    """

    def __init__(
        self,
        encoder: SentenceEncoder | None,
        dim: int = 64,
        seed: int = 0,
        context: str = "kind",
        embed_dims: int = 0,
    ) -> None:
        if context not in ("kind", "projection"):
            raise ValueError(f"context must be 'kind' or 'projection', got {context!r}")
        self.context = context
        self.proj_dim = dim if context == "projection" else embed_dims
        if self.proj_dim and encoder is None:
            raise ValueError("an embedding context needs a sentence encoder")
        self.encoder = encoder
        self.regions = len(KINDS) if context == "kind" else 0
        rng = np.random.default_rng(seed)
        in_dim = encoder.dim if encoder is not None else 0
        self._proj = rng.normal(size=(in_dim, self.proj_dim)) / math.sqrt(max(1, self.proj_dim))

    @classmethod
    def from_settings(
        cls, encoder: SentenceEncoder | None, settings: FeaturizerSettings
    ) -> Featurizer:
        return cls(encoder, settings.dim, settings.seed, settings.context, settings.embed_dims)

    @property
    def dim(self) -> int:
        return self.regions + self.proj_dim + N_EXTRA

    def kinds(
        self,
        questions: Sequence[str],
        has_document: Sequence[bool],
        tasks: Sequence[str | None] | None = None,
    ) -> list[str]:
        tasks = list(tasks) if tasks is not None else [None] * len(questions)
        return [query_kind(q, d, t) for q, d, t in zip(questions, has_document, tasks, strict=True)]

    def features_batch(
        self,
        questions: Sequence[str],
        has_document: Sequence[bool],
        tasks: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        n = len(questions)
        parts = []
        if self.regions:
            onehot = np.zeros((n, self.regions))
            for i, kind in enumerate(self.kinds(questions, has_document, tasks)):
                onehot[i, KINDS.index(kind)] = 1.0
            parts.append(onehot)
        if self.proj_dim:
            assert self.encoder is not None
            parts.append(self.encoder.encode(questions) @ self._proj)
        extra = np.array(
            [
                [float(d), min(1.0, math.log1p(len(q)) / 10.0), 1.0]
                for q, d in zip(questions, has_document, strict=True)
            ]
        )
        parts.append(extra.reshape(n, N_EXTRA))
        x: np.ndarray = np.concatenate(parts, axis=1)
        return x

    def features(self, question: str, has_document: bool, task: str | None = None) -> np.ndarray:
        x: np.ndarray = self.features_batch([question], [has_document], [task])[0]
        return x
