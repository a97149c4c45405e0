"""The held-out protocol on synthetic records: grouped splits, deferral curves, bootstrap intervals,
learned deferral and the Learn-then-Test threshold (pure functions, no models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade.schemas import Signals
from pipelines.calibrate import CalibrationRecord, TierOutcome
from pipelines.deferral import feature_names
from pipelines.protocol import (
    SHARE_LIMITS,
    Data,
    _finite_interval,
    grouped_splits,
    guaranteed_threshold,
    in_domain_guarantee,
    oracle_score,
    target_interval,
    weighted_curves,
    write_protocol,
)
from pipelines.token_series import TokenSeries, pack
from pipelines.transfer import unseen_by, write_transfer


def synthetic(n: int, seed: int = 0) -> list[CalibrationRecord]:
    """Small answers are right more often when their least likely token is likely; 20 groups."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        length = int(rng.integers(1, 8))
        logprob = -rng.exponential(rng.uniform(0.05, 1.5), size=length).astype(np.float32)
        small_right = rng.uniform() < 1 / (1 + np.exp(-(3 * float(logprob.min()) + 2)))
        large_right = rng.uniform() < 0.75
        tokens = TokenSeries(logprob=pack(logprob), entropy=pack(-logprob * 2), margin=pack(1 + logprob))
        signals = Signals(n_tokens=length, n_words=length, mean_logprob=float(logprob.mean()),
                          min_logprob=float(logprob.min()), mean_entropy=float(-logprob.mean() * 2),
                          max_entropy=float(-logprob.min() * 2), first_token_margin=float(1 + logprob[0]))
        tiers = [TierOutcome(tier=t, model=t, answer="a b", signals=signals, exact_match=float(right), f1=float(right),
                             prompt_tokens=100, completion_tokens=length, latency_ms=1.0, cost=cost, tokens=tokens)
                 for t, right, cost in (("small", small_right, 1e-5), ("large", large_right, 1e-4))]
        records.append(CalibrationRecord(id=str(i), dataset="squad", question="q", answers=["a"], tiers=tiers,
                                         group=f"article-{i % 20}"))
    return records


def test_grouped_splits_never_cut_a_group() -> None:
    groups = np.array([f"g{i % 12}" for i in range(600)])
    for split in grouped_splits(groups, splits=10, seed=3):
        parts = [set(groups[p]) for p in (split.fit, split.calibrate, split.test)]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(split.fit) + len(split.calibrate) + len(split.test) == len(groups)


def test_the_oracle_curve_bounds_every_other_and_ends_at_large_only() -> None:
    rng = np.random.default_rng(0)
    small, large = (rng.random(200) < 0.5).astype(float), (rng.random(200) < 0.7).astype(float)
    weights = np.ones((1, 200))
    _, oracle = weighted_curves(oracle_score(small, large), small, large, weights)
    _, random = weighted_curves(rng.random(200), small, large, weights)
    assert (oracle >= random - 1e-12).all()
    assert oracle[0, 0] == pytest.approx(small.mean()) and oracle[0, -1] == pytest.approx(large.mean())


def test_learn_then_test_threshold_extremes() -> None:
    score = np.linspace(0, 1, 300)  # 100 would not do: a 3% loss is not provable on 100 questions at δ = 0.1
    right, wrong = np.ones(300), np.zeros(300)
    assert guaranteed_threshold(score, right, right, 0.97, 0.1) == np.inf, "nothing to lose: escalate nothing"
    accepted = score < guaranteed_threshold(score, wrong, right, 0.97, 0.1)
    assert accepted.mean() <= 0.03, "every accepted answer is lost: at most 3% of them may be accepted"


def test_protocol_end_to_end_on_informative_records(tmp_path: Path) -> None:
    records = synthetic(1200)
    summary = write_protocol(records, tmp_path, title="synthetic", splits=4, bootstrap=100, delta=0.1)
    methods = summary["methods"]
    assert methods["oracle"]["audc"]["point"] >= max(m["audc"]["point"] for m in methods.values()) - 1e-9
    for name, figures in methods.items():
        assert figures["audc"]["low"] <= figures["audc"]["mean"] <= figures["audc"]["high"], name
    assert summary["best_learned"] is not None
    assert methods[summary["best_learned"]]["audc"]["point"] > methods["random"]["audc"]["point"]
    assert all(0.0 <= row["violation_rate"] <= 1.0 for row in summary["guarantee"].values())
    assert "pre-router (question embedding)" in methods, "what pre-routing could know, ranked like the rest"
    assert (tmp_path / "summary.md").read_text().count("|") > 20 and (tmp_path / "deferral_curves.png").stat().st_size
    assert Data.of(records).features.shape[1] == len(feature_names())


@pytest.mark.integration
def test_cascade_evaluate_grouped_protocol_from_the_command_line(tmp_path: Path) -> None:
    import subprocess

    import orjson

    from tests.conftest import CASCADE

    records = tmp_path / "records.jsonl"
    records.write_bytes(b"".join(orjson.dumps(r.model_dump(mode="json")) + b"\n" for r in synthetic(300)))
    result = subprocess.run([CASCADE, "evaluate", "--records", str(records), "--out", str(tmp_path / "out"),
                             "--protocol", "grouped", "--splits", "2", "--bootstrap", "20"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "AUDC" in result.stdout and (tmp_path / "out" / "summary.json").is_file()
    wrong = subprocess.run([CASCADE, "evaluate", "--records", str(records), "--out", str(tmp_path / "x"),
                            "--protocol", "nested"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2
    assert "--protocol must be in-sample, grouped or transfer" in " ".join(wrong.stderr.split())
    sliced = subprocess.run([CASCADE, "evaluate", "--records", str(records), "--out", str(tmp_path / "y"),
                             "--protocol", "grouped", "--rows", ":100"], capture_output=True, text=True, timeout=120)
    assert sliced.returncode == 2
    assert "--rows applies to --protocol in-sample" in " ".join(sliced.stderr.split())


def test_the_guarantee_holds_in_domain_at_least_one_minus_delta_of_the_time() -> None:
    """Calibrated on 300 questions drawn from a population of 3,000, the threshold keeps the population's
    routed quality at ≥ 97% of large-only in at least 1 − δ of 200 draws (binomial slack allowed)."""
    data = Data.of(synthetic(3000, seed=5))
    score = -data.signals.column("min_logprob")
    rng = np.random.default_rng(0)
    rows = [in_domain_guarantee(score, data.small, data.large, np.arange(3000), 0.97, 0.1, 300, rng)
            for _ in range(200)]
    assert np.mean([r["violated"] for r in rows]) <= 0.1 + 0.05
    assert np.mean([r["saved"] for r in rows]) > 0.05, "and it does not get there by escalating everything"


def test_transfer_ranks_the_target_with_models_fitted_on_the_source(tmp_path: Path) -> None:
    source, target = Data.of(synthetic(1200, seed=0)), Data.of(synthetic(600, seed=1))
    summary = write_transfer(source, target, tmp_path, title="synthetic transfer", draws=3, bootstrap=50)
    methods = summary["methods"]
    learned = [name for name in methods if name.startswith("learned")]
    assert learned and max(methods[n]["audc"]["point"] for n in learned) > methods["random"]["audc"]["point"]
    for kinds in summary["thresholds"].values():
        assert kinds["source"]["runs"] == kinds["in_domain"]["runs"] == 3
    assert "source only: violation rate" in (tmp_path / "summary.md").read_text()


def test_a_figure_at_a_target_gets_its_resamples_optimism_taken_back() -> None:
    """Resamples that pass the target sooner than the sample itself (an interval beside the point) are
    reflected around the point; a resample spread centred on the point keeps its percentiles."""
    rng = np.random.default_rng(0)
    optimistic = np.concatenate([[0.20], rng.uniform(0.25, 0.35, size=2000)])
    figure = target_interval(optimistic)
    assert figure["low"] < 0.20 and figure["high"] < 0.20
    assert figure["low"] == pytest.approx(2 * 0.20 - np.percentile(optimistic[1:], 97.5))
    centred = np.concatenate([[0.5], 0.5 + rng.normal(0, 0.05, size=2000)])
    low, high = np.percentile(centred[1:], [2.5, 97.5])
    assert target_interval(centred)["low"] == pytest.approx(low, abs=0.01)
    assert target_interval(centred)["high"] == pytest.approx(high, abs=0.01)
    assert target_interval(np.array([0.99, 0.5, 0.6, 0.7]))["high"] == 1.0


def test_transfer_leaves_out_the_target_questions_the_source_was_fitted_on() -> None:
    source, other = synthetic(30, seed=1), synthetic(20, seed=2)
    other = [record.model_copy(update={"id": f"other-{record.id}"}) for record in other]
    assert unseen_by(source, [*source[:10], *other]) == other


def test_a_cost_above_large_only_keeps_its_interval_and_an_unreachable_target_has_none() -> None:
    """A cascade that escalates everything costs more than large-only (small calls too): its interval is
    not cut at 1; a share is."""
    costs = np.array([1.02, 1.01, 1.03, 1.00, 1.02])
    figure = _finite_interval(costs, SHARE_LIMITS["cost"])
    assert figure["high"] is not None and figure["high"] > 1.0
    assert _finite_interval(np.array([0.99, 0.90, 0.92]), SHARE_LIMITS["small_skipped"])["high"] == 1.0
    unreachable = _finite_interval(np.array([np.inf, np.inf, np.inf]), SHARE_LIMITS["cost"])
    assert unreachable["point"] is None and unreachable["low"] is None and unreachable["reached"] == 0.0
