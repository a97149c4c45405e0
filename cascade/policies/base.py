"""What every routing policy returns for a batch, and the protocol policies implement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from cascade.signals import SignalBatch


@dataclass(frozen=True)
class PolicyDecision:
    """Per-answer confidence in [0, 1] and whether to escalate, for a whole batch."""

    confidence: np.ndarray  # (B,) float64
    escalate: np.ndarray  # (B,) bool

    def __post_init__(self) -> None:
        if self.confidence.shape != self.escalate.shape:
            raise ValueError("confidence and escalate must have one entry per answer")


@runtime_checkable
class Policy(Protocol):
    """Decides, for a batch of signals, which answers to accept and which to escalate."""

    @property
    def kind(self) -> str:
        """The policy's tag in policy files."""
        ...

    def decide(self, signals: SignalBatch) -> PolicyDecision:
        """Vectorized decision for every answer in the batch."""
        ...

    def explain(self, signals: SignalBatch, index: int, escalate: bool) -> str:
        """A human-readable reason for one answer's decision."""
        ...


def geometric_mean_probability(signals: SignalBatch) -> np.ndarray:
    """exp(mean token logprob): the per-token probability the model gave its own answer."""
    return np.exp(signals.column("mean_logprob"))
