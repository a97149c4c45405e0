"""N tiers, small to large, each with its own policy; the last tier always accepts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cascade.policies.accept import AcceptAllPolicy
from cascade.policies.base import Policy, PolicyDecision
from cascade.signals import SignalBatch


class CascadePolicy:
    """Per-tier policies; tier i's decision says whether an answer moves on to tier i + 1."""

    def __init__(self, policies: Sequence[Policy]) -> None:
        if not policies:
            raise ValueError("a cascade needs at least one tier")
        self.policies: list[Policy] = [*policies[:-1], AcceptAllPolicy()]
        self._last_confidence = policies[-1]

    def __len__(self) -> int:
        return len(self.policies)

    def decide(self, tier: int, signals: SignalBatch) -> PolicyDecision:
        """Decisions for a batch answered by ``tier``; the last tier never escalates."""
        if not 0 <= tier < len(self.policies):
            raise IndexError(f"tier {tier} out of range for a {len(self.policies)}-tier cascade")
        if tier == len(self.policies) - 1:
            confidence = self._last_confidence.decide(signals).confidence
            return PolicyDecision(confidence, np.zeros(len(signals), bool))
        return self.policies[tier].decide(signals)

    def explain(self, tier: int, signals: SignalBatch, index: int, escalate: bool) -> str:
        """Reason for one answer's decision at ``tier``."""
        return self.policies[tier].explain(signals, index, escalate)
