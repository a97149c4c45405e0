"""Deferral features and learned deferral models over calibration records.

Features per answer, all computed from the record alone (the per-token series it keeps): the
quantiles 0, .1, .25, .5, .75 and 1 of each per-token series (logprob, entropy, top-1/top-2
margin), the sum of logprobs, answer length in tokens and words, the first token's margin, where
the least likely token sits (0 = first, 1 = last), and cheap task checks: the answer is a span of
the context, the answer says "unanswerable" (or is empty).

Two targets are compared: ``small_wrong`` (escalate what the small model likely got wrong) and
``escalation_helps`` (escalate where the large model is right and the small one wrong). Models:
logistic regression and gradient-boosted trees (scikit-learn), each with an isotonic map fitted on
a separate calibration split, so that scores are probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipelines.calibrate import CalibrationRecord
from pipelines.metrics import normalize_answer

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
SERIES = ("logprob", "entropy", "margin")
Target = Literal["small_wrong", "escalation_helps"]
ModelKind = Literal["logistic", "boosted"]


def feature_names() -> list[str]:
    names = [f"{series}_q{round(q * 100):02d}" for series in SERIES for q in QUANTILES]
    return [*names, "sum_logprob", "n_tokens", "n_words", "first_token_margin", "argmin_position",
            "span_of_context", "says_unanswerable"]


def _quantiles(values: np.ndarray | None) -> list[float]:
    if values is None or not len(values):
        return [0.0] * len(QUANTILES)
    return [float(v) for v in np.quantile(values, QUANTILES)]


def features_of(record: CalibrationRecord, context: str | None = None) -> np.ndarray:
    """The feature row of a record's small-tier answer (see the module docstring)."""
    small = record.tiers[0]
    if small.tokens is not None:
        series = small.tokens.arrays()
    else:  # an older record without its token series: the aggregate signals stand in
        s = small.signals
        series = {"logprob": np.array([s.mean_logprob, s.min_logprob], np.float32),
                  "entropy": np.array([s.mean_entropy, s.max_entropy], np.float32),
                  "margin": np.array([s.first_token_margin], np.float32)}
    logprob = series["logprob"]
    assert logprob is not None
    row = [q for name in SERIES for q in _quantiles(series[name])]
    answer = normalize_answer(small.answer)
    n = len(logprob)
    position = float(np.argmin(logprob)) / max(n - 1, 1) if n else 0.0
    row += [float(logprob.sum()) if n else 0.0, float(small.completion_tokens), float(len(small.answer.split())),
            float(small.signals.first_token_margin), position,
            float(bool(answer) and context is not None and answer in normalize_answer(context)),
            float(not answer or answer == "unanswerable")]
    return np.nan_to_num(np.asarray(row, np.float64), nan=0.0, posinf=30.0, neginf=-30.0)


def feature_matrix(records: Sequence[CalibrationRecord], contexts: Mapping[str, str] | None = None) -> np.ndarray:
    return np.stack([features_of(r, (contexts or {}).get(r.id)) for r in records])


def labels_of(small_correct: np.ndarray, large_correct: np.ndarray, target: Target) -> np.ndarray:
    """1 where escalating is wanted under ``target``."""
    small, large = small_correct > 0.5, large_correct > 0.5
    return (~small if target == "small_wrong" else large & ~small).astype(np.int64)


@dataclass
class DeferralModel:
    """A fitted model whose ``escalation_score`` is the calibrated probability that escalating is wanted."""

    kind: ModelKind
    target: Target
    estimator: Any
    isotonic: Any | None = None

    @classmethod
    def fit(cls, features: np.ndarray, wanted: np.ndarray, kind: ModelKind, target: Target,
            seed: int = 0) -> DeferralModel:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if kind == "logistic":
            estimator = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000))
        else:
            estimator = HistGradientBoostingClassifier(max_depth=3, learning_rate=0.05, max_iter=200,
                                                       min_samples_leaf=20, l2_regularization=1.0, random_state=seed)
        if len(np.unique(wanted)) < 2:
            raise ValueError("cannot fit a deferral model: the fit split has one class only")
        estimator.fit(features, wanted)
        return cls(kind, target, estimator)

    def raw(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(features)[:, 1])

    def calibrate(self, features: np.ndarray, wanted: np.ndarray) -> DeferralModel:
        """Fit the isotonic map from raw scores to probabilities on a calibration split."""
        from sklearn.isotonic import IsotonicRegression

        self.isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(self.raw(features), wanted)
        return self

    def escalation_score(self, features: np.ndarray) -> np.ndarray:
        """Higher means escalate first. Ties after the isotonic map are broken by the raw score."""
        raw = self.raw(features)
        if self.isotonic is None:
            return raw
        return np.asarray(self.isotonic.predict(raw)) + 1e-6 * raw
