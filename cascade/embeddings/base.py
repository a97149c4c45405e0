"""What the semantic cache needs of an embedder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Unit vectors for questions, a batch at a time. ``name`` names the vector space: entries
    embedded by one embedder are never compared with another's (the cache index is per name)."""

    name: str
    dimensions: int
    cheap: bool  # a question costs well under a millisecond: embedded on the event loop, not in a thread

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimensions) float32 unit vectors."""
        ...


def embed_each(embedder: Embedder, texts: Sequence[str], labels: Sequence[str],
               consequence: str) -> tuple[np.ndarray, int]:
    """One batched embedding of the texts; if the batch fails, each text alone, with a row of NaN for a
    text that cannot be embedded (logged by its label with the ``consequence``), and how many
    could not: one text the embedder refuses never costs its batch-mates their vectors."""
    try:
        return embedder.embed(list(texts)), 0
    except Exception as error:
        log.warning("embedding a batch of %d texts failed (%s); embedding them one by one", len(texts),
                    type(error).__name__)
    rows = np.full((len(texts), embedder.dimensions), np.nan, np.float32)
    failed = 0
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        try:
            rows[i] = embedder.embed([text])[0]
        except Exception as error:
            failed += 1
            log.warning("%s: not embedded, %s: %s", label, consequence, type(error).__name__)
    return rows, failed


def publish(folder: Path, build: Callable[[Path], None]) -> Path:
    """``build`` a model into a temporary folder beside ``folder`` and rename it into place; replicas
    starting together each build one, the first rename wins and the others are dropped."""
    import contextlib
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(staging)
        with contextlib.suppress(OSError):  # another process published it first
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def limit_tokenizer_threads(threads: int) -> None:
    """With one thread, Hugging Face tokenizers encode a batch on the calling thread instead of their
    Rust thread pool, whose workers spin on the replica's shared cores (the static embedder: 63 -> 35 µs
    of CPU per question in batches of 8 here). The variable is read at every call; one set by the user
    is kept."""
    import os

    if threads == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def model_home() -> Path:
    """Where models built on this machine are kept (``CASCADE_MODEL_HOME``, else the user's cache)."""
    import os

    return Path(os.environ.get("CASCADE_MODEL_HOME") or Path.home() / ".cache" / "cascade" / "models")
