"""Embeddings cached on disk, keyed by a hash of the encoder's name and the text.

Each call that computes new vectors writes one shard (``<digest>.npz``: the keys and the vectors)
with an atomic rename, so concurrent runs never read a half-written file; reads load every shard of
the encoder's folder once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), d) float32 vectors."""
        ...


def default_cache_dir() -> Path:
    """``CASCADE_EMBEDDING_CACHE``, else ``~/.cache/cascade/embeddings``."""
    explicit = os.environ.get("CASCADE_EMBEDDING_CACHE")
    return Path(explicit) if explicit else Path.home() / ".cache" / "cascade" / "embeddings"


def text_key(encoder: str, text: str) -> str:
    """Hex SHA-256 of the encoder name and the text."""
    return hashlib.sha256(f"{encoder}\0{text}".encode()).hexdigest()


class CachedEmbedder:
    """Wraps an embedder; vectors already on disk are not computed again."""

    def __init__(self, embedder: Embedder, encoder: str = "all-MiniLM-L6-v2",
                 folder: Path | None = None) -> None:
        self.embedder = embedder
        self.encoder = encoder
        self.folder = (folder or default_cache_dir()) / encoder.replace("/", "_")
        self._vectors: dict[str, np.ndarray] | None = None
        self.computed = 0  # texts embedded by the wrapped encoder (not found in the cache)

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            for shard in sorted(self.folder.glob("*.npz")):
                with np.load(shard) as data:
                    self._vectors.update(zip(data["keys"].tolist(), data["vectors"], strict=True))
        return self._vectors

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256("".join(keys).encode()).hexdigest()[:24]
        temporary = self.folder / f".{digest}.{os.getpid()}.tmp.npz"
        np.savez(temporary, keys=np.array(keys), vectors=vectors)
        temporary.replace(self.folder / f"{digest}.npz")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), d) float32 vectors, from the cache where present."""
        cache = self._load()
        keys = [text_key(self.encoder, t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in cache))
        if missing:
            first = {k: t for k, t in zip(keys, texts, strict=True) if k in set(missing)}
            vectors = np.asarray(self.embedder.embed([first[k] for k in missing]), np.float32)
            self._store(missing, vectors)
            cache.update(zip(missing, vectors, strict=True))
            self.computed += len(missing)
        if not keys:
            return np.zeros((0, 0), np.float32)
        return np.stack([cache[k] for k in keys]).astype(np.float32)
