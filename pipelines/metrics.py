"""Evaluation metrics: answer scores (from ``cascade.answers``), calibration and AUROC."""

from __future__ import annotations

import numpy as np

from cascade.answers import ABSTENTIONS, exact_match, is_abstention, normalize_answer, token_f1

__all__ = [
    "ABSTENTIONS",
    "auroc",
    "exact_match",
    "expected_calibration_error",
    "is_abstention",
    "normalize_answer",
    "reliability_bins",
    "token_f1",
]


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and accuracy in each non-empty bin."""
    confidence = np.clip(np.asarray(confidence, np.float64), 0.0, 1.0)
    correct = np.asarray(correct, np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / np.maximum(counts, 1)
    accuracy = np.bincount(index, weights=correct, minlength=bins) / np.maximum(counts, 1)
    return [{"low": b / bins, "high": (b + 1) / bins, "count": int(counts[b]),
             "confidence": float(mean_confidence[b]), "accuracy": float(accuracy[b])}
            for b in range(bins) if counts[b]]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Σ_bins (count / n) · |accuracy − mean confidence| over equal-width bins."""
    table = reliability_bins(confidence, correct, bins)
    total = sum(b["count"] for b in table)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in table)) if total else 0.0


def auroc(score: np.ndarray, correct: np.ndarray) -> float | None:
    """Area under the ROC curve of ``score`` for predicting correctness (rank statistic, ties
    averaged); None when only one class is present."""
    score = np.asarray(score, np.float64)
    positive = np.asarray(correct).astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average_rank, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
