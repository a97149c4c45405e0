"""The learned deferral policy: fitted in the pipelines, scored by the router from plain arrays with
the same features the records give (pure functions, no models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade.policies import DeferralPolicy, PolicyFileError, load_policy, parse_policy, save_policy
from cascade.policies.features import FEATURE_NAMES
from cascade.schemas import Generation, GenerationParams, Query
from cascade.signals import SignalBatch, signals_of
from pipelines.calibrate import CalibrationRecord, TierOutcome
from pipelines.deferral import DeferralModel, feature_matrix, labels_of
from pipelines.fit import fit_deferral
from pipelines.outcomes import outcomes_of
from pipelines.token_series import TokenSeries
from tests.pipelines.test_protocol import synthetic


@pytest.mark.parametrize("kind", ["logistic", "boosted"])
def test_the_exported_policy_scores_as_the_fitted_model_does_and_round_trips(kind: str, tmp_path: Path) -> None:
    records = synthetic(1500, seed=7)
    features, outcomes = feature_matrix(records), outcomes_of(records)
    wanted = labels_of(outcomes.small_correct, outcomes.large_correct, "small_wrong")
    model = DeferralModel.fit(features[:1000], wanted[:1000], kind, "small_wrong").calibrate(
        features[1000:], wanted[1000:])  # type: ignore[arg-type]
    policy = model.policy(0.5, name=f"deferral-{kind}")
    assert np.allclose(policy.score(features), model.escalation_score(features), atol=1e-9)
    save_policy(policy, tmp_path / "policy.json")
    again = load_policy(tmp_path / "policy.json")
    assert isinstance(again, DeferralPolicy) and np.array_equal(again.score(features), policy.score(features))


def test_a_policy_for_other_features_is_refused() -> None:
    document = {"kind": "deferral", "features": ["mean_logprob"], "model": {
        "kind": "logistic", "mean": [0.0], "scale": [1.0], "coef": [1.0], "intercept": 0.0},
        "isotonic_x": [0.0, 1.0], "isotonic_y": [0.0, 1.0], "threshold": 0.5}
    with pytest.raises(PolicyFileError, match="deferral features"):
        parse_policy(document)


def test_the_router_computes_the_features_the_calibration_records_give() -> None:
    """Train/serve: the features of live generations (signals_of with their queries) are the ones
    fitted on, computed from the records' stored series (float16 there, hence the tolerance)."""
    rng = np.random.default_rng(0)
    context = "The Normans gave their name to Normandy, a region in France, in the 10th century."
    texts = ["France", "a region in France", "Normandy is in France, I think", "", "10th century"]
    generations, queries, records = [], [], []
    for i, text in enumerate(texts):
        n = len(text.split()) + 1 if text else 0
        top = np.sort(-rng.exponential(1.0, size=(n, 5)).astype(np.float32), axis=1)[:, ::-1]
        generation = Generation(model="m", text=text, token_ids=np.arange(n), token_logprobs=top[:, 0].copy(),
                                top_logprobs=top, entropy=rng.uniform(0, 2, n).astype(np.float32),
                                finish_reason="stop", prompt_tokens=20, completion_tokens=n)
        query = Query(id=str(i), prompt="Where is Normandy?", context=[context], params=GenerationParams())
        signals = signals_of([generation])
        generations.append(generation)
        queries.append(query)
        tiers = [TierOutcome(tier=t, model="m", answer=text, signals=signals.row(0), exact_match=0.0, f1=0.0,
                             prompt_tokens=20, completion_tokens=n, latency_ms=1.0, cost=0.0,
                             tokens=TokenSeries.of(generation)) for t in ("small", "large")]
        records.append(CalibrationRecord(id=str(i), dataset="squad", question="Where is Normandy?", answers=["France"],
                                         tiers=tiers))
    live = signals_of(generations, queries).features
    stored = feature_matrix(records, {str(i): context for i in range(len(texts))})
    assert live.shape == stored.shape == (len(texts), len(FEATURE_NAMES))
    assert np.allclose(live, stored, atol=2e-2)
    span = FEATURE_NAMES.index("span_of_context")
    assert live[:, span].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_fit_deferral_keeps_the_target_on_its_calibration_part_and_escalates_the_doubtful() -> None:
    records = synthetic(2000, seed=3)
    policy, report = fit_deferral(records, target=0.97)
    assert report["quality_ratio"] >= 0.97  # type: ignore[operator]
    assert 0.0 < report["escalation_rate"] < 1.0  # type: ignore[operator]
    outcomes = outcomes_of(records)
    signals = SignalBatch(outcomes.signals.values, known_features=feature_matrix(records))
    escalate = policy.decide(signals).escalate
    least_likely = signals.column("min_logprob")
    low = least_likely < np.quantile(least_likely, 0.2)
    assert escalate[low].mean() > escalate[~low].mean(), "answers with an unlikely token escalate more"
    _, strict = fit_deferral(records, target=0.97, delta=0.1)
    assert strict["escalation_rate"] >= report["escalation_rate"]  # type: ignore[operator]


def test_a_file_mixing_older_records_reads_each_record_by_what_it_kept() -> None:
    """Records without token series (an older file resumed) stand in with their aggregates, and the
    records beside them keep their own series: each row is what that record alone gives."""
    records = synthetic(12, seed=3)
    older = [r.model_copy(update={"tiers": [r.tiers[0].model_copy(update={"tokens": None}), *r.tiers[1:]]})
             for r in records[:4]]
    mixed = feature_matrix([*older, *records[4:]])
    alone = np.vstack([feature_matrix([record]) for record in [*older, *records[4:]]])
    assert np.array_equal(mixed, alone)
    assert not np.array_equal(mixed[:4], feature_matrix(records)[:4])  # the stand-ins are used
    assert np.array_equal(mixed[4:], feature_matrix(records)[4:])
