"""``cascade fit``: learn a routing policy from calibration records.

The policy predicts whether the small tier's answer is right. Logistic: regularization chosen by
5-fold cross-validated AUROC; the probability threshold is the one that escalates least while the
routed quality (on out-of-fold predictions) stays at ``target`` × large-only quality. Threshold:
a grid search over the seed project's three rules against the same target. Guaranteed: a
min-logprob threshold whose quality holds with probability 1 − δ (Learn-then-Test). Deferral (the
default of ``cascade fit``): gradient-boosted trees on the token-quantile features, which ranked best
held out (``docs/results/*_grouped``), exported as plain arrays for the router.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from cascade.policies import DeferralPolicy, LogisticPolicy, ThresholdPolicy, ThresholdRule
from pipelines.calibrate import CalibrationRecord
from pipelines.deferral import ModelKind
from pipelines.metrics import auroc
from pipelines.outcomes import Outcomes

REGULARIZATION = (0.01, 0.1, 1.0, 10.0)
WORDS = (2, 3, 5, 8, 10, 15, 1_000)
ENTROPY = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 100.0)
LOGPROB = (-0.1, -0.2, -0.3, -0.45, -0.6, -0.8, -1.0, -1.5, -100.0)


def cheapest_meeting(qualities: np.ndarray, escalations: np.ndarray, needed: float) -> int | None:
    """Index of the option with the lowest escalation rate whose quality is at least ``needed``."""
    meeting = np.flatnonzero(qualities >= needed - 1e-12)
    if not meeting.size:
        return None
    return int(meeting[np.lexsort((-qualities[meeting], escalations[meeting]))[0]])


def _out_of_fold(outcomes: Outcomes, regularization: float, folds: int = 5, seed: int = 0) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    labels = outcomes.small_correct > 0.5
    probability = np.zeros(len(outcomes))
    splitter = StratifiedKFold(n_splits=min(folds, int(labels.sum()), int((~labels).sum())), shuffle=True,
                               random_state=seed)
    for train, held_out in splitter.split(outcomes.signals.values, labels):
        policy = LogisticPolicy.fit(outcomes.signals.take(train), labels[train], regularization=regularization)
        probability[held_out] = policy.probability(outcomes.signals.take(held_out))
    return probability


def fit_logistic(outcomes: Outcomes, target: float = 0.97) -> tuple[LogisticPolicy, dict[str, object]]:
    """A logistic policy and its cross-validation report."""
    labels = outcomes.small_correct > 0.5
    if labels.all() or not labels.any():
        raise ValueError("cannot fit: the small tier's answers are all right or all wrong in these records")
    scored = {c: _out_of_fold(outcomes, c) for c in REGULARIZATION}
    areas = {c: auroc(p, labels) or 0.5 for c, p in scored.items()}
    best = max(areas, key=lambda c: areas[c])
    thresholds = np.linspace(0.0, 1.0, 201)
    options = np.array([outcomes.route(scored[best] < t) for t in thresholds])
    large_quality = float(outcomes.large_correct.mean())
    chosen = cheapest_meeting(options[:, 0], options[:, 2], target * large_quality)
    threshold = float(thresholds[chosen]) if chosen is not None else 1.0
    policy = LogisticPolicy.fit(outcomes.signals, labels, regularization=best, threshold=threshold,
                                name="logistic-fitted")
    report = {"cv_auroc": {str(c): a for c, a in areas.items()}, "regularization": best, "threshold": threshold,
              "target": target, "target_met": chosen is not None, "n": len(outcomes)}
    return policy, report


def fit_threshold(outcomes: Outcomes, target: float = 0.97) -> tuple[ThresholdPolicy, dict[str, object]]:
    """Grid search over (words, mean entropy, mean logprob) any-of rules."""
    words, entropy, logprob = (outcomes.signals.column(n) for n in ("n_words", "mean_entropy", "mean_logprob"))
    grid = list(itertools.product(WORDS, ENTROPY, LOGPROB))
    options = np.array([outcomes.route((words > w) | (entropy > e) | (logprob < lp)) for w, e, lp in grid])
    large_quality = float(outcomes.large_correct.mean())
    chosen = cheapest_meeting(options[:, 0], options[:, 2], target * large_quality)
    w, e, lp = grid[chosen] if chosen is not None else (0, 0.0, 0.0)
    policy = ThresholdPolicy(name="threshold-fitted", rules=(
        ThresholdRule(signal="n_words", op=">", value=w),
        ThresholdRule(signal="mean_entropy", op=">", value=e),
        ThresholdRule(signal="mean_logprob", op="<", value=lp),
    ))
    report: dict[str, object] = {"grid_size": len(grid), "target": target, "target_met": chosen is not None,
                                 "n": len(outcomes), "words": w, "mean_entropy": e, "mean_logprob": lp}
    return policy, report


def fit_guaranteed(outcomes: Outcomes, target: float = 0.97,
                   delta: float = 0.1) -> tuple[ThresholdPolicy, dict[str, object]]:
    """A min-logprob threshold with a guarantee: the most permissive one whose Clopper–Pearson upper
    bound on the lost share (Learn-then-Test, fixed-sequence) keeps the routed quality at ``target`` ×
    large-only with probability at least 1 − ``delta``, for questions like these records."""
    from pipelines.protocol import guaranteed_threshold

    min_logprob = outcomes.signals.column("min_logprob")
    small, large = outcomes.small_correct.astype(np.float64), outcomes.large_correct.astype(np.float64)
    threshold = guaranteed_threshold(-min_logprob, small, large, target, delta)  # escalate when score >= it
    value = -threshold if np.isfinite(threshold) else (np.inf if threshold < 0 else -np.inf)
    rule = ThresholdRule(signal="min_logprob", op="<=", value=float(value))
    policy = ThresholdPolicy(name="min-logprob-guaranteed", rules=(rule,))
    quality, _, escalation = outcomes.route(np.asarray(rule.fires(outcomes.signals)))
    report: dict[str, object] = {
        "target": target, "delta": delta, "n": len(outcomes), "min_logprob_at_most": value,
        "escalation_rate": escalation, "quality_ratio": quality / max(float(large.mean()), 1e-12)}
    return policy, report


def fit_deferral(records: Sequence[CalibrationRecord], contexts: Mapping[str, str] | None = None,
                 target: float = 0.97, delta: float | None = None, kind: ModelKind = "boosted",
                 seed: int = 0, metric: str = "exact_match") -> tuple[DeferralPolicy, dict[str, object]]:
    """The learned deferral policy (the grouped protocol's best held-out: gradient-boosted trees on the
    token-quantile features, target "small answer wrong"): fitted on 80% of the groups (articles),
    its isotonic map and threshold set on the other 20% — the cheapest threshold reaching ``target`` ×
    large-only quality there, or with ``delta`` the Learn-then-Test threshold that holds it with
    probability 1 − δ for questions like those."""
    from pipelines.deferral import DeferralModel, feature_matrix, labels_of
    from pipelines.outcomes import outcomes_of, usable_records
    from pipelines.protocol import grouped_splits, guaranteed_threshold

    usable = usable_records(records)
    outcomes = outcomes_of(usable, metric)
    groups = np.array([r.group or r.id for r in usable])
    split = grouped_splits(groups, 1, seed)[0]
    fit, calibrate = np.concatenate([split.fit, split.test]), split.calibrate
    features = feature_matrix(usable, contexts)
    wanted = labels_of(outcomes.small_correct, outcomes.large_correct, "small_wrong")
    model = DeferralModel.fit(features[fit], wanted[fit], kind, "small_wrong", seed)
    model.calibrate(features[calibrate], wanted[calibrate])
    score = model.escalation_score(features[calibrate])
    small, large = outcomes.small_correct[calibrate], outcomes.large_correct[calibrate]
    if delta is not None:
        threshold = guaranteed_threshold(score, small, large, target, delta)
    else:
        candidates = np.concatenate([np.unique(score), [np.inf]])
        qualities = np.array([np.where(score >= t, large, small).mean() for t in candidates])
        escalations = np.array([(score >= t).mean() for t in candidates])
        chosen = cheapest_meeting(qualities, escalations, target * float(large.mean()))
        threshold = float(candidates[chosen]) if chosen is not None else float(-np.inf)
    escalate = score >= threshold
    report: dict[str, object] = {
        "kind": kind, "target": target, "delta": delta, "n": len(usable), "fit": len(fit),
        "calibration": len(calibrate), "threshold": threshold, "escalation_rate": float(escalate.mean()),
        "quality_ratio": float(np.where(escalate, large, small).mean()) / max(float(large.mean()), 1e-12)}
    return model.policy(float(np.clip(threshold, -1.0, 2.0)), name=f"deferral-{kind}"), report  # ±inf: all or none
