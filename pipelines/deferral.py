"""Deferral features and learned deferral models over calibration records.

The features are the router's own (``cascade.policies.features``), computed here from the per-token
series each record keeps, its answer, question and (given ``contexts``) context: quantiles of the
logprob, entropy and margin series, length, first-token margin, where the least likely token sits,
and cheap task checks (a span of the context, an abstention, words shared with context and question).

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

from cascade.policies.deferral import DeferralPolicy, LinearScorer, TreeScorer
from cascade.policies.features import FEATURE_NAMES, deferral_features
from pipelines.calibrate import CalibrationRecord

Target = Literal["small_wrong", "escalation_helps"]
ModelKind = Literal["logistic", "boosted"]


def feature_names() -> list[str]:
    return list(FEATURE_NAMES)


def _aggregate_series(record: CalibrationRecord) -> dict[str, np.ndarray]:
    """An older record without its token series: its aggregate signals stand in for the series."""
    s = record.tiers[0].signals
    return {"logprob": np.array([s.mean_logprob, s.min_logprob], np.float32),
            "entropy": np.array([s.mean_entropy, s.max_entropy], np.float32),
            "margin": np.array([s.first_token_margin, s.first_token_margin], np.float32)}


def _small_series(record: CalibrationRecord) -> dict[str, np.ndarray]:
    """The small answer's per-token series, unpacked once; a series the engine did not give reads as
    zeros (as ``deferral_features`` counts a missing one)."""
    tokens = record.tiers[0].tokens
    if tokens is None:
        return _aggregate_series(record)
    arrays = tokens.arrays()
    logprob = arrays["logprob"]
    assert logprob is not None  # every token series has its logprobs
    return {name: np.zeros(len(logprob), np.float32) if values is None else values for name, values in arrays.items()}


def feature_matrix(records: Sequence[CalibrationRecord], contexts: Mapping[str, str] | None = None) -> np.ndarray:
    """The features of each record's small-tier answer (``cascade.policies.features``, as the router
    computes them), for all records in one batch."""
    series = [_small_series(r) for r in records]
    joined = {name: np.concatenate([s[name] for s in series]) if series else np.zeros(0, np.float32)
              for name in ("logprob", "entropy", "margin")}
    return deferral_features(
        np.array([len(s["logprob"]) for s in series], np.int64), joined["logprob"], joined["entropy"],
        joined["margin"], np.array([r.tiers[0].signals.first_token_margin for r in records]),
        [r.tiers[0].answer for r in records], [r.question for r in records],
        [(contexts or {}).get(r.id) for r in records])


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

    def scorer(self) -> LinearScorer | TreeScorer:
        """The fitted model as plain arrays, scored in numpy by the router's deferral policy."""
        if self.kind == "logistic":
            scaler, logistic = self.estimator[0], self.estimator[-1]
            return LinearScorer(mean=tuple(scaler.mean_.tolist()), scale=tuple(scaler.scale_.tolist()),
                                coef=tuple(logistic.coef_[0].tolist()), intercept=float(logistic.intercept_[0]))
        trees = [predictors[0].nodes for predictors in self.estimator._predictors]
        width = max(len(tree) for tree in trees)

        def padded(field: str, fill: Any) -> list[list[Any]]:
            return [tree[field].tolist() + [fill] * (width - len(tree)) for tree in trees]

        return TreeScorer(
            baseline=float(np.ravel(self.estimator._baseline_prediction)[0]), feature=padded("feature_idx", 0),
            threshold=padded("num_threshold", 0.0), left=padded("left", 0), right=padded("right", 0),
            leaf=[[bool(x) for x in tree["is_leaf"]] + [True] * (width - len(tree)) for tree in trees],
            value=padded("value", 0.0),
            missing_left=[[bool(x) for x in tree["missing_go_to_left"]] + [True] * (width - len(tree))
                          for tree in trees],
            depth=max(1, int(max(tree["depth"].max() for tree in trees))))

    def policy(self, threshold: float, name: str = "deferral") -> DeferralPolicy:
        """The router's policy for this calibrated model, escalating at scores ≥ ``threshold``."""
        if self.isotonic is None:
            raise ValueError("calibrate the model before exporting it as a policy")
        return DeferralPolicy(name=name, target=self.target, model=self.scorer(),
                              isotonic_x=tuple(self.isotonic.X_thresholds_.tolist()),
                              isotonic_y=tuple(self.isotonic.y_thresholds_.tolist()), threshold=threshold)

    def escalation_score(self, features: np.ndarray) -> np.ndarray:
        """Higher means escalate first. Ties after the isotonic map are broken by the raw score."""
        raw = self.raw(features)
        if self.isotonic is None:
            return raw
        return np.asarray(self.isotonic.predict(raw)) + 1e-6 * raw
