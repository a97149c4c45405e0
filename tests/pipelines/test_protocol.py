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
    Data,
    grouped_splits,
    guaranteed_threshold,
    oracle_score,
    weighted_curves,
    write_protocol,
)
from pipelines.token_series import TokenSeries, pack


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
    score = np.linspace(0, 1, 100)
    right, wrong = np.ones(100), np.zeros(100)
    assert guaranteed_threshold(score, right, right, 0.97, 0.1) == np.inf, "nothing to lose: escalate nothing"
    assert (score >= guaranteed_threshold(score, wrong, right, 0.97, 0.1)).all(), "everything lost: escalate all"


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
    assert wrong.returncode == 2 and "--protocol must be in-sample or grouped" in " ".join(wrong.stderr.split())
