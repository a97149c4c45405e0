"""``cascade evaluate``: cost–quality curves of routing policies on calibration records.

Writes ``summary.json``, ``summary.md``, ``cost_quality.png`` and ``reliability.png``: each
policy's curve over its threshold next to small-only, large-only and the seed presets; the
large-model call reduction at 97% and 99% of large-only quality; AUROC of every signal alone; the
calibration (ECE) of each confidence; and self-consistency's AUROC against its extra tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from cascade.policies import PRESETS, DeferralPolicy, LogisticPolicy, ThresholdPolicy, load_policy
from cascade.signals import SIGNAL_NAMES
from pipelines.fit import cheapest_meeting
from pipelines.metrics import auroc, expected_calibration_error, reliability_bins
from pipelines.outcomes import Outcomes

PROBABILITY_THRESHOLDS = np.linspace(0.0, 1.0, 101)
QUALITY_LEVELS = (0.97, 0.99)


def _point(outcomes: Outcomes, escalate: np.ndarray) -> dict[str, float]:
    quality, cost, rate = outcomes.route(escalate)
    return {"quality": quality, "cost": cost, "escalation_rate": rate}


def _reductions(points: Sequence[dict[str, float]], large_quality: float) -> dict[str, float | None]:
    qualities = np.array([p["quality"] for p in points])
    rates = np.array([p["escalation_rate"] for p in points])
    result: dict[str, float | None] = {}
    for level in QUALITY_LEVELS:
        chosen = cheapest_meeting(qualities, rates, level * large_quality)
        result[f"at_{round(level * 100)}pct"] = None if chosen is None else float(1.0 - rates[chosen])
    return result


def evaluate(outcomes: Outcomes, policies: Sequence[LogisticPolicy | ThresholdPolicy | DeferralPolicy]
             ) -> dict[str, object]:
    """The whole evaluation as one JSON-ready dictionary."""
    n = len(outcomes)
    large_quality = float(outcomes.large_correct.mean())
    labels = outcomes.small_correct > 0.5
    baselines = {
        "small_only": {"quality": float(outcomes.small_correct.mean()), "cost": float(outcomes.small_cost.sum()),
                       "escalation_rate": 0.0},
        "large_only": {"quality": large_quality, "cost": float(outcomes.large_cost.sum()), "escalation_rate": 1.0},
    }
    presets = {name: _point(outcomes, p.decide(outcomes.signals).escalate) for name, p in PRESETS.items()}
    curves: dict[str, dict[str, object]] = {}
    calibration: dict[str, dict[str, object]] = {}
    geometric = np.exp(outcomes.signals.column("mean_logprob"))
    confidences = {"geometric_mean_probability": geometric}
    for policy in policies:
        if isinstance(policy, LogisticPolicy):
            probability = policy.probability(outcomes.signals)
            points = [_point(outcomes, probability < t) for t in PROBABILITY_THRESHOLDS]
            confidences[policy.name] = probability
        elif isinstance(policy, DeferralPolicy):
            score = policy.score(outcomes.signals.features)
            points = [_point(outcomes, score >= t) for t in np.quantile(score, PROBABILITY_THRESHOLDS)]
            confidences[policy.name] = np.clip(1.0 - score, 0.0, 1.0)
        else:
            points = [_point(outcomes, policy.decide(outcomes.signals).escalate)]
        curves[policy.name] = {"points": points, "reduction_of_large_calls": _reductions(points, large_quality),
                               "operating_point": _point(outcomes, policy.decide(outcomes.signals).escalate)}
    for name, point in presets.items():
        curves[name] = {"points": [point], "reduction_of_large_calls": _reductions([point], large_quality),
                        "operating_point": point}
    for name, confidence in confidences.items():
        calibration[name] = {"ece": expected_calibration_error(confidence, labels),
                             "bins": reliability_bins(confidence, labels)}
    signal_auroc = {name: auroc(outcomes.signals.column(name), labels) for name in SIGNAL_NAMES}
    sampled = ~np.isnan(outcomes.agreement)
    self_consistency = None
    if sampled.any():
        self_consistency = {
            "n": int(sampled.sum()),
            "auroc": auroc(outcomes.agreement[sampled], labels[sampled]),
            "extra_tokens_per_query": float(outcomes.sample_tokens[sampled].mean()),
            "small_tokens_per_query": float(outcomes.small_tokens[sampled].mean()),
        }
    return {"n": n, "baselines": baselines, "curves": curves, "signal_auroc": signal_auroc,
            "calibration": calibration, "self_consistency": self_consistency}


def markdown(summary: dict[str, object]) -> str:
    """The tables of a summary."""
    baselines, curves = summary["baselines"], summary["curves"]
    assert isinstance(baselines, dict) and isinstance(curves, dict)
    lines = [f"{summary['n']} questions.", "",
             "| routing | quality | cost ($) | large-model calls | fewer large calls at ≥97% / ≥99% of large-only |",
             "| --- | --- | --- | --- | --- |"]
    for name, point in baselines.items():
        lines.append(f"| {name} | {point['quality']:.3f} | {point['cost']:.6f} | {point['escalation_rate']:.0%} | |")
    for name, curve in curves.items():
        point, reduction = curve["operating_point"], curve["reduction_of_large_calls"]
        cells = " / ".join("—" if v is None else f"{v:.0%}" for v in reduction.values())
        lines.append(f"| {name} | {point['quality']:.3f} | {point['cost']:.6f} | {point['escalation_rate']:.0%} | "
                     f"{cells} |")
    signal_auroc = summary["signal_auroc"]
    assert isinstance(signal_auroc, dict)
    lines += ["", "| signal | AUROC for a correct small answer |", "| --- | --- |"]
    lines += [f"| {k} | {'—' if v is None else f'{v:.3f}'} |" for k, v in signal_auroc.items()]
    calibration = summary["calibration"]
    assert isinstance(calibration, dict)
    lines += ["", "| confidence | ECE |", "| --- | --- |"]
    lines += [f"| {k} | {v['ece']:.3f} |" for k, v in calibration.items()]
    consistency = summary["self_consistency"]
    if isinstance(consistency, dict):
        area = consistency["auroc"]
        lines += ["", f"Self-consistency ({consistency['n']} questions): AUROC "
                  f"{'—' if area is None else f'{area:.3f}'} for "
                  f"{consistency['extra_tokens_per_query']:.0f} extra tokens per query "
                  f"(the small answer itself took {consistency['small_tokens_per_query']:.0f})."]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, object], out_dir: Path) -> None:
    """cost_quality.png and reliability.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baselines, curves, calibration = summary["baselines"], summary["curves"], summary["calibration"]
    assert isinstance(baselines, dict) and isinstance(curves, dict) and isinstance(calibration, dict)
    figure, axes = plt.subplots(figsize=(7, 5))
    for name, curve in curves.items():
        points = curve["points"]
        costs, qualities = [p["cost"] for p in points], [p["quality"] for p in points]
        if len(points) > 1:
            axes.plot(costs, qualities, label=name)
        else:
            axes.scatter(costs, qualities, label=name, marker="o")
    for name, point in baselines.items():
        axes.scatter([point["cost"]], [point["quality"]], marker="x", s=60, label=name)
    axes.set_xlabel("total cost ($)")
    axes.set_ylabel("exact match")
    axes.legend(fontsize=8)
    axes.set_title("cost against quality")
    figure.tight_layout()
    figure.savefig(out_dir / "cost_quality.png", dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for name, report in calibration.items():
        bins = report["bins"]
        axes.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                  label=f"{name} (ECE {report['ece']:.3f})")
    axes.set_xlabel("confidence")
    axes.set_ylabel("share of small answers correct")
    axes.set_title("reliability of the small model's confidence")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_dir / "reliability.png", dpi=120)
    plt.close(figure)


def write_evaluation(outcomes: Outcomes, policy_files: Sequence[Path], out_dir: Path) -> dict[str, object]:
    """Evaluate and write summary.json, summary.md and the plots."""
    policies = []
    for path in policy_files:
        policy = load_policy(path)
        if not isinstance(policy, LogisticPolicy | ThresholdPolicy | DeferralPolicy):
            raise ValueError(f"{path}: only logistic, threshold and deferral policies can be evaluated")
        policies.append(policy)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = evaluate(outcomes, policies)
    (out_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out_dir / "summary.md").write_text(markdown(summary))
    plot(summary, out_dir)
    return summary
