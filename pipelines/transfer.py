"""``cascade evaluate --protocol transfer``: deferral fitted on one dataset, used on another.

The learned models are fitted on the source records (e.g. SQuAD) and rank the target questions
(SQuAD 2.0, HotpotQA); the baselines need no fitting. Every method's deferral curve on the target
gives its area and the large calls saved at ≥ 97% / ≥ 99% of large-only quality, with paired-bootstrap
intervals over the target's groups (its articles, or its questions where each is its own group).
Then the thresholds: a guaranteed threshold (``guaranteed_threshold``) calibrated either on a
calibration part of the source (no target data at all) or on ``calibration_size`` target questions
drawn at random (an in-domain calibration set), each judged on every target question; repeated
``draws`` times, so the violation rate shows whether "≥ 97% of large-only quality with probability
1 − δ" survives the move to another dataset, and what a small in-domain set buys back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipelines.calibrate import CalibrationRecord
from pipelines.deferral import DeferralModel, labels_of
from pipelines.protocol import (
    LEARNED,
    LEVELS,
    Data,
    baseline_scores,
    curve_area,
    group_bootstrap,
    grouped_splits,
    guaranteed_threshold,
    method_figures,
    methods_table,
    realized,
    savings,
    weighted_curves,
)

CALIBRATION_SIZE = 200


def unseen_by(source: Sequence[CalibrationRecord], target: Sequence[CalibrationRecord]) -> list[CalibrationRecord]:
    """The target records whose question the source does not hold (SQuAD's questions are the answerable
    half of SQuAD 2.0's: fitted on, they would be judged on themselves)."""
    seen = {(record.id, record.question) for record in source}
    return [record for record in target if (record.id, record.question) not in seen]


def _learned(source: Data, fit: np.ndarray, seed: int) -> dict[str, DeferralModel]:
    models = {}
    for kind, target in LEARNED:
        wanted = labels_of(source.small, source.large, target)
        try:
            models[f"learned {kind} ({target.replace('_', ' ')})"] = DeferralModel.fit(
                source.features[fit], wanted[fit], kind, target, seed)
        except ValueError:
            continue
    return models


def _judge(score: np.ndarray, threshold: float, small: np.ndarray, large: np.ndarray, level: float) -> dict[str, float]:
    escalate = score >= threshold
    routed = float(np.where(escalate, large, small).mean())
    return {"quality_ratio": routed / max(float(large.mean()), 1e-12), "saved": float(1 - escalate.mean()),
            "violated": float(routed < level * float(large.mean()) - 1e-12)}


def run_transfer(source: Data, target: Data, *, draws: int = 10, seed: int = 0, bootstrap: int = 500,
                 delta: float = 0.1, calibration_size: int = CALIBRATION_SIZE) -> dict[str, Any]:
    """The transfer study as one JSON-ready dictionary (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = len(target.small)
    everyone = np.arange(n)
    weights = group_bootstrap(target.groups, bootstrap, rng)
    large_quality = (weights * target.large).sum(axis=1) / weights.sum(axis=1)
    splits = grouped_splits(source.groups, draws, seed)
    per_method: dict[str, dict[str, list[np.ndarray]]] = {}
    thresholds: dict[str, dict[str, list[dict[str, float]]]] = {}
    for number, split in enumerate(splits):
        fit = np.concatenate([split.fit, split.test])  # the source's calibration part stays out of the fit
        models = _learned(source, fit, seed + number)
        scores = {**baseline_scores(target, rng), **{name: m.raw(target.features) for name, m in models.items()}}
        source_scores = {**baseline_scores(source, rng), **{name: m.raw(source.features) for name, m in models.items()}}
        for name, score in scores.items():
            if number == 0 or name.startswith("learned"):  # baselines do not change with the source split
                shares, quality = weighted_curves(score, target.small, target.large, weights)
                figures = per_method.setdefault(
                    name, {"audc": [], **{f"saved_at_{round(v * 100)}": [] for v in LEVELS}})
                figures["audc"].append(curve_area(shares, quality))
                for level in LEVELS:
                    figures[f"saved_at_{round(level * 100)}"].append(savings(shares, quality, level * large_quality))
            if not (name.startswith("learned") or name.startswith("min logprob")):
                continue
            cal = split.calibrate
            for level in LEVELS:
                key = f"{name} @ {round(level * 100)}%"
                rows = thresholds.setdefault(key, {"source": [], "in_domain": []})
                from_source = guaranteed_threshold(source_scores[name][cal], source.small[cal], source.large[cal],
                                                   level, delta)
                rows["source"].append(_judge(score, from_source, target.small, target.large, level))
                drawn = rng.choice(everyone, size=min(calibration_size, n), replace=False)
                in_domain = guaranteed_threshold(score[drawn], target.small[drawn], target.large[drawn], level, delta)
                rows["in_domain"].append(_judge(score, in_domain, target.small, target.large, level))
    methods = method_figures(per_method)
    return {
        "source_n": len(source.small), "target_n": n, "draws": draws, "bootstrap": bootstrap, "delta": delta,
        "calibration_size": calibration_size, "small_quality": float(target.small.mean()),
        "large_quality": float(target.large.mean()), "methods": methods,
        "thresholds": {key: {where: realized(rows) for where, rows in kinds.items()}
                       for key, kinds in thresholds.items()},
    }


def markdown(summary: Mapping[str, Any], title: str) -> str:
    lines = [f"# {title}", "",
             f"Learned deferral fitted on {summary['source_n']} source questions, used on {summary['target_n']} "
             f"target questions (small-only {summary['small_quality']:.3f}, "
             f"large-only {summary['large_quality']:.3f}; {summary.get('left_out_shared', 0)} target questions "
             "that the source holds left out); "
             f"{summary['draws']} source splits; 95% paired-bootstrap intervals over the target's groups "
             "(basic intervals for the calls saved at a target).", "",
             *methods_table(summary["methods"])]
    lines += ["", f"Guaranteed thresholds (δ = {summary['delta']}) judged on every target question: calibrated on "
              f"the source only, or on {summary['calibration_size']} target questions drawn at random.", "",
              "| method @ target | source only: violation rate | quality / large-only | saved | in-domain: violation "
              "rate | quality / large-only | saved |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, kinds in summary["thresholds"].items():
        a, b = kinds["source"], kinds["in_domain"]
        lines.append(f"| {key} | {a['violation_rate']:.2f} | {a['mean_quality_ratio']:.3f} | {a['mean_saved']:.3f} | "
                     f"{b['violation_rate']:.2f} | {b['mean_quality_ratio']:.3f} | {b['mean_saved']:.3f} |")
    return "\n".join(lines) + "\n"


def write_transfer(source: Data, target: Data, out: Path, *, title: str, left_out: int = 0,
                   **options: Any) -> dict[str, Any]:
    summary = {**run_transfer(source, target, **options), "left_out_shared": left_out}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out / "summary.md").write_text(markdown(summary, title))
    return summary
