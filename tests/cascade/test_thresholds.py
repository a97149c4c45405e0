"""Threshold targets as pure functions: the point estimate, and the guaranteed mode that holds the
precision with probability 1 − δ."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.thresholds import ThresholdTarget, guaranteed_quality_threshold, quality_threshold


def labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform confidences, each answer right with probability equal to its confidence."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(size=n)
    return confidence, (rng.uniform(size=n) < confidence).astype(np.float64)


def test_the_guarantee_is_stricter_than_the_point_estimate_and_holds_over_draws() -> None:
    # P(correct | c) = c on uniform c: precision above t is (1 + t) / 2, so 0.8 needs t >= 0.6.
    violations = 0
    for seed in range(40):
        confidence, correct = labelled(1000, seed)
        estimate = quality_threshold(confidence, correct, 0.8, 50)
        guaranteed = guaranteed_quality_threshold(confidence, correct, 0.8, 0.1, 50)
        assert estimate is not None and guaranteed is not None and guaranteed >= estimate
        violations += (1 + guaranteed) / 2 < 0.8
    assert violations / 40 <= 0.1, "the true precision above the guaranteed threshold misses 0.8 at most δ of the time"


def test_no_threshold_without_evidence() -> None:
    confidence, correct = labelled(30, 0)
    assert guaranteed_quality_threshold(confidence, correct, 0.8, 0.1, 50) is None
    assert guaranteed_quality_threshold(confidence, np.zeros(30), 0.8, 0.1, 5) is None


def test_delta_is_for_the_quality_target_only() -> None:
    assert ThresholdTarget(kind="quality", value=0.9, delta=0.1).delta == 0.1
    with pytest.raises(ValueError, match="quality target only"):
        ThresholdTarget(kind="escalation_budget", value=0.3, delta=0.1)
