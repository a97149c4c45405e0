"""A static embedding distilled on this machine from the packaged MiniLM with model2vec: a question's
vector is the mean of its tokens' rows, so it costs a tokenizer pass and a lookup (about 0.03 ms per
question in a batch of 8 here, against 13 ms for MiniLM itself). model2vec's own ``encode`` pools
question by question in Python; for a model whose rows are used as they are (no token mapping, no
weights: the distilled default) the pooling is done here, from a float32 copy of the rows (about 30 MB:
the float16 rows cost more to convert than to sum), with the same vectors: one question, what a lookup
under light load embeds, in half the time one ``np.add.reduceat`` over converted rows took (the speed
rows of ``tests/benchmarks/bench_embedders.py``: 37 µs against 65 µs at p50 here)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from cascade.embeddings.base import limit_tokenizer_threads, model_home, publish
from cascade.embeddings.minilm import minilm_path

log = logging.getLogger(__name__)


class StaticConfig(BaseModel):
    kind: Literal["static"] = "static"
    dimensions: int = Field(default=256, ge=8, le=384, description="PCA dimensions of the distilled rows")
    path: str | None = Field(default=None, description=(
        "a model2vec folder to load; by default one is distilled from the packaged MiniLM on first use "
        "(about 30 s) and kept under CASCADE_MODEL_HOME"))

    def build(self) -> StaticEmbedder:
        return StaticEmbedder(self.dimensions, Path(self.path) if self.path else None)


def distill(folder: Path, dimensions: int) -> Path:
    """Distil MiniLM into ``folder`` unless it holds a model already; concurrent callers (replicas
    starting together) each write a temporary folder and the first rename wins."""
    if (folder / "model.safetensors").is_file():
        return folder
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model2vec.distill import distill as distill_model

    log.info("distilling a %d-d static embedding from MiniLM into %s (once per machine)", dimensions, folder)
    return publish(folder, lambda staging: distill_model(model_name=minilm_path(), pca_dims=dimensions)
                   .save_pretrained(str(staging)))


class StaticEmbedder:
    """Unit vectors from a model2vec static model, distilled from MiniLM unless a folder is given."""

    cheap = True

    def __init__(self, dimensions: int = 256, path: Path | None = None) -> None:
        self.dimensions = dimensions
        self.name = f"static-minilm-{dimensions}" if path is None else f"static-{path.name}"
        self.path = path
        self._model: Any = None
        self._rows: np.ndarray | None = None  # float32 token rows, where this module pools them itself

    def _load(self) -> Any:
        if self._model is None:
            from model2vec import StaticModel

            limit_tokenizer_threads(1)
            folder = self.path or distill(model_home() / f"static-minilm-{self.dimensions}", self.dimensions)
            model = StaticModel.from_pretrained(str(folder))
            poolable = model.token_mapping is None and model.weights is None and model.embedding.dtype.kind == "f"
            self._rows = np.asarray(model.embedding, np.float32) if poolable else None
            self._model = model
            self.dimensions = int(model.dim)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimensions) float32 unit vectors (a question with no known token: a zero row)."""
        if not texts:
            return np.zeros((0, self.dimensions), np.float32)
        model = self._load()
        if self._rows is not None:
            vectors = summed_rows(model, self._rows, texts)
        else:
            vectors = np.asarray(model.encode(list(texts), show_progress_bar=False), np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def summed_rows(model: Any, rows: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """Per text, the sum of its tokens' ``rows``, in the direction of model2vec's mean pooling (the same
    truncation, characters then tokens, and unknown tokens left out); a zero row where no token is known.
    One tokenizer call for the batch, then one gather and sum per text: cheaper than one ``reduceat``
    over the batch's rows for 1, 2, 8 and 64 texts."""
    limit = model.max_length
    if limit is not None:
        texts = [text[:limit * model.median_token_length] for text in texts]
    encodings = model.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    out = np.zeros((len(encodings), rows.shape[1]), np.float32)
    for i, encoding in enumerate(encodings):
        known = [t for t in encoding.ids[:limit] if t != model.unk_token_id]
        if known:
            rows[known].sum(axis=0, out=out[i])
    return out
