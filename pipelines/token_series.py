"""Per-token series of a generation, kept compressed in calibration records so any feature can be
recomputed offline without running the models again.

Each series is float16, zlib-compressed and base64-encoded (about 1 byte per token per series for
short answers): the chosen token's logprob, the full-vocabulary entropy (where the engine gives it)
and the top-1 minus top-2 logprob margin.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np
from pydantic import BaseModel

from cascade.schemas import Generation


def pack(values: np.ndarray) -> str:
    """float16, zlib, base64."""
    return base64.b64encode(zlib.compress(np.asarray(values, np.float16).tobytes(), 9)).decode()


def unpack(text: str) -> np.ndarray:
    """The float32 array ``pack`` stored."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), np.float16).astype(np.float32)


class TokenSeries(BaseModel):
    """One answer's per-token series, compressed (see the module docstring)."""

    logprob: str
    entropy: str | None = None
    margin: str | None = None

    @classmethod
    def of(cls, generation: Generation) -> TokenSeries:
        top = generation.top_logprobs
        margin = top[:, 0] - top[:, 1] if top.ndim == 2 and top.shape[1] >= 2 else None
        return cls(logprob=pack(generation.token_logprobs),
                   entropy=None if generation.entropy is None else pack(generation.entropy),
                   margin=None if margin is None else pack(np.nan_to_num(margin, posinf=30.0)))

    def arrays(self) -> dict[str, np.ndarray | None]:
        """The series as float32 arrays (None where the engine did not give it)."""
        return {"logprob": unpack(self.logprob),
                "entropy": None if self.entropy is None else unpack(self.entropy),
                "margin": None if self.margin is None else unpack(self.margin)}
