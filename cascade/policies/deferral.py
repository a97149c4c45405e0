"""The learned deferral policy: a model over the deferral features (``features.py``) that estimates
the probability that escalating is wanted, mapped through an isotonic calibration, escalating at or
above a threshold (fitted by ``cascade fit``; with ``--delta``, a threshold with a guarantee).

The model is fitted with scikit-learn and stored as plain arrays, scored in numpy for the whole
batch: a standardized logistic regression, or gradient-boosted trees (every tree walked at once,
one level per step). Confidence is one minus that probability, so live thresholds and the
controller treat it like any other policy's.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from cascade.policies.base import PolicyDecision
from cascade.policies.features import FEATURE_NAMES
from cascade.signals import SignalBatch


class LinearScorer(BaseModel):
    """sigmoid(w · (x − mean) / scale + b)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["logistic"] = "logistic"
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def raw(self, features: np.ndarray) -> np.ndarray:
        standardized = (features - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(standardized @ np.asarray(self.coef) + self.intercept)))

    @property
    def width(self) -> int:
        return len(self.coef)


class TreeScorer(BaseModel):
    """sigmoid(baseline + Σ trees): each tree as parallel node arrays (padded to one length); a node
    goes left when its feature is ≤ its threshold (a missing value goes where ``missing_left`` says)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["boosted"] = "boosted"
    baseline: float
    feature: list[list[int]]
    threshold: list[list[float]]
    left: list[list[int]]
    right: list[list[int]]
    leaf: list[list[bool]]
    value: list[list[float]]
    missing_left: list[list[bool]]
    depth: int = Field(ge=1, description="the deepest leaf's depth: steps to walk")
    _arrays: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _rectangular(self) -> TreeScorer:
        shapes = {np.asarray(getattr(self, f), dtype=object).shape for f in
                  ("feature", "threshold", "left", "right", "leaf", "value", "missing_left")}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError("every tree array must be (trees, nodes) and all of one shape")
        return self

    def model_post_init(self, context: object, /) -> None:
        """The trees as flat arrays (node n of tree t at t × nodes + n), children as flat indices."""
        width = len(self.feature[0]) if self.feature else 0
        offsets = (np.arange(len(self.feature)) * width)[:, None]
        self._arrays.update(
            feature=np.asarray(self.feature, np.int64).ravel(), threshold=np.asarray(self.threshold).ravel(),
            left=(np.asarray(self.left, np.int64) + offsets).ravel(),
            right=(np.asarray(self.right, np.int64) + offsets).ravel(),
            leaf=np.asarray(self.leaf, bool).ravel(), value=np.asarray(self.value).ravel(),
            missing_left=np.asarray(self.missing_left, bool).ravel(), roots=offsets.ravel())

    def raw(self, features: np.ndarray) -> np.ndarray:
        arrays = self._arrays
        batch, width = features.shape
        flat = np.ascontiguousarray(features, np.float64).ravel()
        node = np.broadcast_to(arrays["roots"], (batch, len(arrays["roots"]))).copy()
        base = (np.arange(batch) * width)[:, None]
        for _ in range(self.depth):
            x = flat[base + arrays["feature"][node]]
            go_left = np.where(np.isnan(x), arrays["missing_left"][node], x <= arrays["threshold"][node])
            node = np.where(arrays["leaf"][node], node, np.where(go_left, arrays["left"][node], arrays["right"][node]))
        total = self.baseline + arrays["value"][node].sum(axis=1)
        return 1.0 / (1.0 + np.exp(-total))

    @property
    def width(self) -> int:
        return int(np.max(self.feature)) + 1 if self.feature else 0


class DeferralPolicy(BaseModel):
    """Escalate when the calibrated probability that escalating is wanted reaches ``threshold``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["deferral"] = "deferral"
    name: str = "deferral"
    target: Literal["small_wrong", "escalation_helps"] = "small_wrong"
    features: tuple[str, ...] = FEATURE_NAMES
    model: Annotated[LinearScorer | TreeScorer, Field(discriminator="kind")]
    isotonic_x: tuple[float, ...] = Field(description="raw scores of the isotonic map, increasing")
    isotonic_y: tuple[float, ...] = Field(description="calibrated probabilities at those scores")
    threshold: float = Field(description="escalate when the score is at or above this")

    @model_validator(mode="after")
    def _consistent(self) -> DeferralPolicy:
        if self.features != FEATURE_NAMES:
            raise ValueError(f"features must be this version's deferral features: {', '.join(FEATURE_NAMES)}")
        if self.model.width > len(FEATURE_NAMES):
            raise ValueError(f"the model reads {self.model.width} features; there are {len(FEATURE_NAMES)}")
        if len(self.isotonic_x) != len(self.isotonic_y) or not self.isotonic_x:
            raise ValueError("isotonic_x and isotonic_y must be non-empty and of one length")
        if np.any(np.diff(self.isotonic_x) < 0):
            raise ValueError("isotonic_x must be increasing")
        return self

    def probability(self, features: np.ndarray) -> np.ndarray:
        """(B,) calibrated probability that escalating is wanted."""
        return np.interp(self.model.raw(features), self.isotonic_x, self.isotonic_y)

    def score(self, features: np.ndarray) -> np.ndarray:
        """The calibrated probability, ties broken by the raw score (what ``threshold`` applies to)."""
        raw = self.model.raw(features)
        return np.interp(raw, self.isotonic_x, self.isotonic_y) + 1e-6 * raw

    def decide(self, signals: SignalBatch) -> PolicyDecision:
        score = self.score(signals.features)
        return PolicyDecision(np.clip(1.0 - score, 0.0, 1.0), score >= self.threshold)

    def explain(self, signals: SignalBatch, index: int, escalate: bool) -> str:
        p = float(self.score(signals.features[index:index + 1])[0])
        wanted = "the small answer is wrong" if self.target == "small_wrong" else "the large model does better"
        verb, relation = ("escalated", ">=") if escalate else ("accepted", "<")
        return f"{verb} by {self.name}: p({wanted}) {p:.3f} {relation} {self.threshold:g}"

    def with_threshold(self, threshold: float) -> DeferralPolicy:
        return self.model_copy(update={"threshold": threshold})
