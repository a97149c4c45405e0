"""Logistic regression on standardized signals, predicting whether the small model is right."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.policies.base import PolicyDecision
from cascade.signals import SIGNAL_NAMES, SignalBatch


class LogisticPolicy(BaseModel):
    """p(correct) = sigmoid(w · (x - mean) / scale + b); escalate when p < ``threshold``.

    Fitted with scikit-learn; scoring is plain numpy so the router needs no estimator object.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["logistic"] = "logistic"
    name: str = "logistic"
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> LogisticPolicy:
        unknown = [f for f in self.features if f not in SIGNAL_NAMES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; known signals: {', '.join(SIGNAL_NAMES)}")
        sizes = {len(self.features), len(self.mean), len(self.scale), len(self.coef)}
        if len(sizes) != 1:
            raise ValueError("features, mean, scale and coef must have the same length")
        if any(s <= 0 for s in self.scale):
            raise ValueError("every entry of scale must be positive")
        return self

    def probability(self, signals: SignalBatch) -> np.ndarray:
        """(B,) estimated probability that each answer is correct."""
        columns = [SIGNAL_NAMES.index(f) for f in self.features]
        standardized = (signals.values[:, columns] - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(standardized @ np.asarray(self.coef) + self.intercept)))

    def decide(self, signals: SignalBatch) -> PolicyDecision:
        probability = self.probability(signals)
        return PolicyDecision(probability, probability < self.threshold)

    def explain(self, signals: SignalBatch, index: int, escalate: bool) -> str:
        p = float(self.probability(signals.take(np.array([index])))[0])
        verb = "escalated" if escalate else "accepted"
        relation = "<" if escalate else ">="
        return f"{verb} by {self.name}: p(correct) {p:.3f} {relation} {self.threshold:g}"

    def with_threshold(self, threshold: float) -> LogisticPolicy:
        """The same model deciding at another probability threshold."""
        return self.model_copy(update={"threshold": threshold})

    @classmethod
    def fit(
        cls,
        signals: SignalBatch,
        correct: np.ndarray,
        *,
        features: Sequence[str] = SIGNAL_NAMES,
        threshold: float = 0.5,
        regularization: float = 1.0,
        name: str = "logistic",
    ) -> LogisticPolicy:
        """Fit on labelled signals (``correct`` is 1 where the answer was right)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        labels = np.asarray(correct).astype(int)
        if labels.shape != (len(signals),):
            raise ValueError(f"need one label per answer: {labels.shape[0]} labels, {len(signals)} answers")
        if len(np.unique(labels)) < 2:
            raise ValueError("cannot fit a logistic policy: the labels contain only one class")
        columns = [SIGNAL_NAMES.index(f) for f in features]
        scaler = StandardScaler().fit(signals.values[:, columns])
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        model = LogisticRegression(C=regularization, max_iter=1000)
        model.fit((signals.values[:, columns] - scaler.mean_) / scale, labels)
        return cls(
            name=name,
            features=tuple(features),
            mean=tuple(float(v) for v in scaler.mean_),
            scale=tuple(float(v) for v in scale),
            coef=tuple(float(v) for v in model.coef_[0]),
            intercept=float(model.intercept_[0]),
            threshold=threshold,
        )
