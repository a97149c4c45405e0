"""The policy of a last tier: accept everything."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from cascade.policies.base import PolicyDecision, geometric_mean_probability
from cascade.signals import SignalBatch


class AcceptAllPolicy(BaseModel):
    """Accepts every answer; confidence is the geometric-mean token probability."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["accept"] = "accept"
    name: str = "accept-all"

    def decide(self, signals: SignalBatch) -> PolicyDecision:
        return PolicyDecision(geometric_mean_probability(signals), np.zeros(len(signals), bool))

    def explain(self, signals: SignalBatch, index: int, escalate: bool) -> str:
        return "accepted: last tier"
