"""Answer metrics: the official SQuAD normalization, exact match and token F1, and abstention."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)
ABSTENTIONS = frozenset({"", "i dont know", "unanswerable", "no answer", "unknown", "cannot be determined",
                         "not enough information", "none"})


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (SQuAD's evaluation script)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def is_abstention(prediction: str) -> bool:
    """An empty answer or an "I don't know" counts as declining to answer."""
    return normalize_answer(prediction) in ABSTENTIONS


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold; for no gold, when it abstains."""
    if not golds:
        return float(is_abstention(prediction))
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 against the golds; for no gold, 1.0 when it abstains."""
    if not golds:
        return float(is_abstention(prediction))
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        expected = normalize_answer(gold).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if not predicted or not expected:
            best = max(best, float(predicted == expected))
        elif common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


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
