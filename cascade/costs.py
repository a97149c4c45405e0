"""Prices per model and the cost of a routed answer across every tier it passed through."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cascade.schemas import Generation, TierAttempt


class ModelPrice(BaseModel):
    """Dollars per million input and output tokens, and/or per GPU-second for self-hosted pools."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_million: float = Field(default=0.0, ge=0.0)
    output_per_million: float = Field(default=0.0, ge=0.0)
    per_gpu_second: float = Field(default=0.0, ge=0.0)
    gpus: float = Field(default=1.0, gt=0.0)

    def cost(
        self,
        prompt_tokens: np.ndarray | int,
        completion_tokens: np.ndarray | int,
        seconds: np.ndarray | float = 0.0,
    ) -> np.ndarray:
        """Dollars for one call or, given arrays, for each call of a batch."""
        tokens = (np.asarray(prompt_tokens, np.float64) * self.input_per_million
                  + np.asarray(completion_tokens, np.float64) * self.output_per_million) / 1e6
        return tokens + np.asarray(seconds, np.float64) * self.per_gpu_second * self.gpus

    def cost_of(self, generations: Sequence[Generation], call_seconds: float | None = None) -> np.ndarray:
        """Dollars for each generation of a batch, from its token counts and pool time: with
        ``call_seconds`` (the batched call's wall time) the pool's time is shared equally by the batch,
        as a GPU serving the batch in parallel is busy once for all of it; without, each generation's
        own engine time."""
        count = len(generations)
        prompt = np.fromiter((g.prompt_tokens for g in generations), np.int64, count)
        completion = np.fromiter((g.completion_tokens for g in generations), np.int64, count)
        if call_seconds is not None and count:
            seconds = np.full(count, call_seconds / count)
        else:
            seconds = np.fromiter(((g.prompt_ms + g.decode_ms) / 1000 for g in generations), np.float64, count)
        return self.cost(prompt, completion, seconds)


def total_cost(attempts: Iterable[TierAttempt]) -> float:
    """What an answer cost: every tier it passed through, including rejected answers."""
    return float(sum(a.cost for a in attempts))
