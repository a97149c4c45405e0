"""calibrate on real models and data (resumable), and the fit → evaluate round trip through the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest

from cascade.policies import DeferralPolicy, LogisticPolicy, load_policy
from cascade.schemas import Signals
from pipelines.calibrate import CalibrationRecord, TierOutcome, calibrate, read_records
from pipelines.datasets import load_qa
from pipelines.metrics import exact_match
from pipelines.token_series import TokenSeries, pack, unpack
from services.settings import CascadeSettings
from tests.conftest import CASCADE, embedded_settings


def test_token_series_round_trip_within_float16() -> None:
    values = np.array([-0.01, -1.5, -7.25, -20.0, 0.0], np.float32)
    assert np.allclose(unpack(pack(values)), values, rtol=1e-3, atol=1e-3)
    assert TokenSeries(logprob=pack(values)).arrays()["entropy"] is None


def test_older_records_without_tokens_or_groups_stay_readable(tmp_path: Path) -> None:
    old = synthetic_records(1)[0].model_dump(mode="json")
    for tier in old["tiers"]:
        del tier["tokens"]
    del old["group"]
    path = tmp_path / "old.jsonl"
    path.write_bytes(orjson.dumps(old) + b"\n")
    [record] = read_records(path)
    assert record.group == "" and record.tiers[0].tokens is None


@pytest.mark.model
async def test_calibrate_records_every_tier_and_resumes(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    settings = CascadeSettings(**embedded_settings())
    questions = load_qa("squad_v2", data_dir, limit=3)
    first = await calibrate(settings, questions[:2], out, samples=1)
    assert [r.id for r in first] == [q.id for q in questions[:2]]
    resumed = await calibrate(settings, questions, out, samples=1)
    assert [r.id for r in resumed] == [q.id for q in questions], "resumed without redoing finished questions"
    assert len(out.read_bytes().splitlines()) == 3
    for record in resumed:
        assert [t.tier for t in record.tiers] == ["small", "large"]
        assert all(t.cost > 0 and t.prompt_tokens > 0 and t.exact_match in (0.0, 1.0) for t in record.tiers)
        assert len(record.samples) == 1 and record.sample_tokens > 0
        assert record.group, "each record names its SQuAD article, for splits by article"
        for tier, question in ((t, q) for t in record.tiers for q in questions if q.id == record.id):
            assert tier.exact_match == exact_match(tier.answer, question.answers)
            assert tier.tokens is not None
            series = tier.tokens.arrays()
            assert len(series["logprob"]) == tier.completion_tokens or len(series["logprob"]) < tier.completion_tokens
            assert series["entropy"] is not None and len(series["entropy"]) == len(series["logprob"])
            assert series["margin"] is not None and (series["margin"] >= 0).all()


def synthetic_records(n: int, seed: int = 0) -> list[CalibrationRecord]:
    """Records whose small answer is right more often when its mean logprob is high."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        logprob = rng.uniform(-2.0, 0.0)
        small_right = rng.uniform() < 1 / (1 + np.exp(-(4 * logprob + 3)))
        signals = Signals(n_tokens=3, n_words=int(rng.integers(1, 12)), mean_logprob=logprob, min_logprob=logprob - 1,
                          mean_entropy=float(rng.uniform(0, 3)), max_entropy=3.0, first_token_margin=1.0)
        tiers = [TierOutcome(tier=t, model=t, answer="a", signals=signals, exact_match=float(right), f1=float(right),
                             prompt_tokens=100, completion_tokens=3, latency_ms=1.0, cost=cost)
                 for t, right, cost in (("small", small_right, 1e-5), ("large", rng.uniform() < 0.8, 1e-4))]
        records.append(CalibrationRecord(id=str(i), dataset="squad", question="q", answers=["a"], tiers=tiers,
                                         samples=["a", "b"] if small_right else ["b", "c"], sample_tokens=200))
    return records


def test_a_guaranteed_threshold_escalates_less_as_the_target_or_the_confidence_loosens() -> None:
    """``cascade fit --target-quality --delta``: a min-logprob rule that keeps the target on its own
    records and gives up more large calls only as the target drops or δ grows."""
    from pipelines.fit import fit_guaranteed
    from pipelines.outcomes import outcomes_of

    outcomes = outcomes_of(synthetic_records(2000, seed=3))
    rates = {}
    for target, delta in ((0.99, 0.05), (0.97, 0.05), (0.97, 0.2), (0.9, 0.2)):
        policy, report = fit_guaranteed(outcomes, target, delta)
        [rule] = policy.rules
        assert rule.signal == "min_logprob" and rule.op == "<="
        assert float(report["quality_ratio"]) >= target  # type: ignore[arg-type]
        rates[(target, delta)] = float(report["escalation_rate"])  # type: ignore[arg-type]
    assert rates[(0.99, 0.05)] >= rates[(0.97, 0.05)] >= rates[(0.97, 0.2)] >= rates[(0.9, 0.2)]
    assert rates[(0.9, 0.2)] < 1.0, "a loose target lets some small answers through"


def cascade(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CASCADE, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_fit_then_evaluate_round_trip(tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"".join(orjson.dumps(r.model_dump(mode="json")) + b"\n" for r in synthetic_records(400)))
    assert len(read_records(records)) == 400
    logistic, threshold = tmp_path / "logistic.json", tmp_path / "threshold.json"
    for kind, path in (("logistic", logistic), ("threshold", threshold)):
        result = cascade("fit", "--records", str(records), "--policy", kind, "--out", str(path))
        assert result.returncode == 0, result.stderr
    guaranteed = tmp_path / "guaranteed.json"
    result = cascade("fit", "--records", str(records), "--policy", "min-logprob", "--out", str(guaranteed),
                     "--target-quality", "0.97", "--delta", "0.1")
    assert result.returncode == 0 and '"delta":0.1' in result.stdout, result.stderr
    assert load_policy(guaranteed).rules[0].signal == "min_logprob"  # type: ignore[union-attr]
    fitted = load_policy(logistic)
    assert isinstance(fitted, LogisticPolicy)
    assert dict(zip(fitted.features, fitted.coef, strict=True))["mean_logprob"] > 0
    deferral = tmp_path / "deferral.json"  # the default kind
    result = cascade("fit", "--records", str(records), "--out", str(deferral))
    assert result.returncode == 0 and isinstance(load_policy(deferral), DeferralPolicy), result.stderr

    out = tmp_path / "evaluation"
    result = cascade("evaluate", "--records", str(records), "--policy", str(logistic), "--policy", str(threshold),
                     "--policy", str(deferral), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["curves"]) == {"logistic", "threshold", "deferral", "v1", "v2", "v3"}, "named by their file"
    assert len(summary["curves"]["logistic"]["points"]) == 101
    assert summary["signal_auroc"]["mean_logprob"] > 0.7
    assert summary["self_consistency"]["auroc"] == 1.0
    large = summary["baselines"]["large_only"]["quality"]
    for curve in summary["curves"].values():
        reduction = curve["reduction_of_large_calls"]["at_97pct"]
        if reduction is not None:
            kept = [p for p in curve["points"] if p["quality"] >= 0.97 * large - 1e-12]
            assert reduction == max(1 - p["escalation_rate"] for p in kept)
    assert (out / "cost_quality.png").stat().st_size and (out / "reliability.png").stat().st_size
    assert "| v1 |" in (out / "summary.md").read_text()

    held_out = tmp_path / "held-out"
    result = cascade("evaluate", "--records", str(records), "--rows", "300:", "--policy", str(logistic),
                     "--out", str(held_out))
    assert result.returncode == 0, result.stderr
    assert json.loads((held_out / "summary.json").read_text())["n"] == 100
    bad = cascade("evaluate", "--records", str(records), "--rows", "half", "--out", str(held_out))
    assert bad.returncode == 2 and "--rows must look like START:STOP" in bad.stderr


@pytest.mark.integration
def test_fit_refuses_records_of_one_class(tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    one_class = synthetic_records(20)
    for record in one_class:
        record.tiers[0].exact_match = 1.0
    records.write_bytes(b"".join(orjson.dumps(r.model_dump(mode="json")) + b"\n" for r in one_class))
    result = cascade("fit", "--records", str(records), "--policy", "logistic", "--out", str(tmp_path / "p.json"))
    assert result.returncode == 2 and "all right or all wrong" in result.stderr


def test_gzipped_records_read_like_plain_ones(tmp_path: Path) -> None:
    """Committed records are gzipped (docs/results/records/); every command reads them as they are."""
    import gzip

    lines = b"".join(orjson.dumps(r.model_dump(mode="json")) + b"\n" for r in synthetic_records(30))
    (tmp_path / "r.jsonl").write_bytes(lines)
    (tmp_path / "r.jsonl.gz").write_bytes(gzip.compress(lines))
    assert read_records(tmp_path / "r.jsonl.gz") == read_records(tmp_path / "r.jsonl") and len(
        read_records(tmp_path / "r.jsonl")) == 30
