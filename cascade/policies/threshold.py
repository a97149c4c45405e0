"""Any-of threshold rules over signals, with the seed project's three presets."""

from __future__ import annotations

import operator
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from cascade.policies.base import PolicyDecision, geometric_mean_probability
from cascade.signals import SIGNAL_NAMES, SignalBatch

_OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


class ThresholdRule(BaseModel):
    """Escalate when ``signal op value`` holds, e.g. ``n_words > 8``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signal: str
    op: Literal[">", ">=", "<", "<="]
    value: float

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, name: str) -> str:
        if name not in SIGNAL_NAMES:
            raise ValueError(f"unknown signal {name!r}; known signals: {', '.join(SIGNAL_NAMES)}")
        return name

    def fires(self, signals: SignalBatch) -> np.ndarray:
        """(B,) bool: where this rule asks for escalation."""
        return np.asarray(_OPERATORS[self.op](signals.column(self.signal), self.value))

    def __str__(self) -> str:
        return f"{self.signal} {self.op} {self.value:g}"


class ThresholdPolicy(BaseModel):
    """Escalate an answer when any rule fires; confidence is the geometric-mean token probability."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["threshold"] = "threshold"
    name: str = "custom"
    rules: tuple[ThresholdRule, ...]

    def fired(self, signals: SignalBatch) -> np.ndarray:
        """(B, n_rules) bool: which rules fire for which answer."""
        if not self.rules:
            return np.zeros((len(signals), 0), bool)
        return np.column_stack([rule.fires(signals) for rule in self.rules])

    def decide(self, signals: SignalBatch) -> PolicyDecision:
        return PolicyDecision(geometric_mean_probability(signals), np.asarray(self.fired(signals).any(axis=1)))

    def explain(self, signals: SignalBatch, index: int, escalate: bool) -> str:
        """The rules that fired for answer ``index`` (evaluated again only for an escalated answer)."""
        if not escalate:
            return f"accepted by {self.name}: no rule fired"
        fired = self.fired(signals.take(np.array([index])))[0]
        hits = [f"{rule} ({signals.column(rule.signal)[index]:.3g})"
                for rule, hit in zip(self.rules, fired, strict=True) if hit]
        return f"escalated by {self.name}: " + ", ".join(hits)


def _preset(name: str, words: float, entropy: float, logprob: float) -> ThresholdPolicy:
    return ThresholdPolicy(
        name=name,
        rules=(
            ThresholdRule(signal="n_words", op=">", value=words),
            ThresholdRule(signal="mean_entropy", op=">", value=entropy),
            ThresholdRule(signal="mean_logprob", op="<", value=logprob),
        ),
    )


PRESETS: dict[str, ThresholdPolicy] = {
    "v1": _preset("v1", 8, 1.5, -0.6),
    "v2": _preset("v2", 5, 1.1, -0.45),
    "v3": _preset("v3", 10, 1.8, -0.8),
}
