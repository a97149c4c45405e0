"""Calibration records as arrays: the small tier's signals and both ends' correctness and cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cascade.signals import SignalBatch
from pipelines.calibrate import CalibrationRecord
from pipelines.metrics import normalize_answer


@dataclass(frozen=True)
class Outcomes:
    """One row per question: the first tier (small) against the last tier (large)."""

    signals: SignalBatch
    small_correct: np.ndarray
    large_correct: np.ndarray
    small_cost: np.ndarray
    large_cost: np.ndarray
    agreement: np.ndarray  # share of sampled small answers equal to the greedy one; NaN without samples
    sample_tokens: np.ndarray
    small_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.small_correct)

    def route(self, escalate: np.ndarray) -> tuple[float, float, float]:
        """Quality, total cost and escalation rate when ``escalate`` marks what goes to the large tier."""
        quality = np.where(escalate, self.large_correct, self.small_correct).mean()
        cost = (self.small_cost + np.where(escalate, self.large_cost, 0.0)).sum()
        return float(quality), float(cost), float(np.mean(escalate))


def usable_records(records: Sequence[CalibrationRecord]) -> list[CalibrationRecord]:
    """The records with answers from at least two tiers (skipped questions are left out)."""
    return [r for r in records if r.error is None and len(r.tiers) >= 2]


def outcomes_of(records: Sequence[CalibrationRecord], metric: str = "exact_match",
                contexts: Mapping[str, str] | None = None) -> Outcomes:
    """Arrays from calibration records; records without answers (skipped questions) are left out.
    With ``contexts`` (question id → context), the signals also carry the deferral features."""
    from pipelines.deferral import feature_matrix

    usable = usable_records(records)
    if not usable:
        raise ValueError("no usable calibration records: every record was skipped or has fewer than two tiers")
    small, large = [r.tiers[0] for r in usable], [r.tiers[-1] for r in usable]
    agreement = np.array([
        np.mean([normalize_answer(s) == normalize_answer(r.tiers[0].answer) for s in r.samples]) if r.samples
        else np.nan for r in usable])
    signals = SignalBatch.from_rows([t.signals for t in small])
    return Outcomes(
        signals=signals if contexts is None else SignalBatch(signals.values,
                                                             known_features=feature_matrix(usable, contexts)),
        small_correct=np.array([getattr(t, metric) for t in small], np.float64),
        large_correct=np.array([getattr(t, metric) for t in large], np.float64),
        small_cost=np.array([t.cost for t in small]),
        large_cost=np.array([t.cost for t in large]),
        agreement=agreement,
        sample_tokens=np.array([r.sample_tokens for r in usable], np.float64),
        small_tokens=np.array([t.prompt_tokens + t.completion_tokens for t in small], np.float64),
    )
