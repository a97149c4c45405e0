"""What the semantic cache needs of an embedder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    """Unit vectors for questions, a batch at a time. ``name`` names the vector space: entries
    embedded by one embedder are never compared with another's (the cache index is per name)."""

    name: str
    dimensions: int
    cheap: bool  # a question costs well under a millisecond: embedded on the event loop, not in a thread

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimensions) float32 unit vectors."""
        ...


def model_home() -> Path:
    """Where models built on this machine are kept (``CASCADE_MODEL_HOME``, else the user's cache)."""
    import os

    return Path(os.environ.get("CASCADE_MODEL_HOME") or Path.home() / ".cache" / "cascade" / "models")
