"""A static embedding distilled on this machine from the packaged MiniLM with model2vec: a question's
vector is the mean of its tokens' rows, so it costs a tokenizer pass and a lookup (about 0.05 ms per
question in a batch of 8 here, against 13 ms for MiniLM itself). model2vec's own ``encode`` pools
question by question in Python; for a model whose rows are used as they are (no token mapping, no
weights: the distilled default) the pooling is done here for the whole batch, with the same result."""

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

    def _load(self) -> Any:
        if self._model is None:
            from model2vec import StaticModel

            limit_tokenizer_threads(1)
            folder = self.path or distill(model_home() / f"static-minilm-{self.dimensions}", self.dimensions)
            self._model = StaticModel.from_pretrained(str(folder))
            self.dimensions = int(self._model.dim)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimensions) float32 unit vectors (a question with no known token: a zero row)."""
        if not texts:
            return np.zeros((0, self.dimensions), np.float32)
        model = self._load()
        if model.token_mapping is None and model.weights is None and model.embedding.dtype.kind == "f":
            vectors = mean_rows(model, texts)
        else:
            vectors = np.asarray(model.encode(list(texts), show_progress_bar=False), np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def mean_rows(model: Any, texts: Sequence[str]) -> np.ndarray:
    """model2vec's mean pooling for a batch: the same truncation (characters, then tokens), unknown
    tokens left out, one tokenizer call and one ``np.add.reduceat`` (float32, not normalized)."""
    limit = model.max_length
    if limit is not None:
        texts = [text[:limit * model.median_token_length] for text in texts]
    encodings = model.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    rows = [[t for t in e.ids[:limit] if t != model.unk_token_id] for e in encodings]
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    out = np.zeros((len(rows), model.dim), np.float32)
    known = lengths > 0
    if known.any():
        tokens = np.fromiter((t for r in rows for t in r), np.int64, int(lengths.sum()))
        starts = (np.cumsum(lengths) - lengths)[known]
        out[known] = np.add.reduceat(np.asarray(model.embedding[tokens], np.float32), starts, axis=0)
        out[known] /= lengths[known, None]
    return out
