"""Policies: the seed presets reproduce their rules exactly; logistic fits and round-trips; cascades."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cascade.policies import (
    PRESETS,
    AcceptAllPolicy,
    CascadePolicy,
    LogisticPolicy,
    PolicyFileError,
    ThresholdPolicy,
    ThresholdRule,
    load_policy,
    resolve_policy,
    save_policy,
)
from cascade.signals import SIGNAL_NAMES, SignalBatch


def random_signals(n: int, seed: int = 0) -> SignalBatch:
    rng = np.random.default_rng(seed)
    values = np.column_stack([
        rng.integers(1, 30, n),  # n_tokens
        rng.integers(0, 15, n),  # n_words
        rng.uniform(-1.5, 0.0, n),  # mean_logprob
        rng.uniform(-6.0, 0.0, n),  # min_logprob
        rng.uniform(0.0, 3.0, n),  # mean_entropy
        rng.uniform(0.0, 6.0, n),  # max_entropy
        rng.uniform(0.0, 8.0, n),  # first_token_margin
    ]).astype(np.float64)
    return SignalBatch(values)


@pytest.mark.parametrize(("preset", "words", "entropy", "logprob"),
                         [("v1", 8, 1.5, -0.6), ("v2", 5, 1.1, -0.45), ("v3", 10, 1.8, -0.8)])
def test_seed_presets_reproduce_their_rules(preset: str, words: float, entropy: float, logprob: float) -> None:
    signals = random_signals(2000)
    decision = PRESETS[preset].decide(signals)
    for i in range(len(signals)):
        row = signals.row(i)
        expected = row.n_words > words or row.mean_entropy > entropy or row.mean_logprob < logprob
        assert bool(decision.escalate[i]) == expected
    assert np.allclose(decision.confidence, np.exp(signals.column("mean_logprob")))


def test_presets_are_strict_at_their_boundaries() -> None:
    at_boundary = np.array([[3, 8, -0.6, -1.0, 1.5, 2.0, 1.0]], np.float64)
    assert not PRESETS["v1"].decide(SignalBatch(at_boundary)).escalate[0]
    over = at_boundary.copy()
    over[0, SIGNAL_NAMES.index("n_words")] = 9
    assert PRESETS["v1"].decide(SignalBatch(over)).escalate[0]


def test_threshold_explains_which_rule_fired() -> None:
    values = np.array([[3, 12, -0.1, -0.5, 0.2, 0.5, 3.0]], np.float64)
    reason = PRESETS["v1"].explain(SignalBatch(values), 0, True)
    assert "n_words > 8" in reason and "mean_entropy" not in reason


def test_unknown_signal_in_a_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown signal 'perplexity'"):
        ThresholdRule(signal="perplexity", op=">", value=1)


def labelled_signals(n: int = 600) -> tuple[SignalBatch, np.ndarray]:
    signals = random_signals(n, seed=1)
    rng = np.random.default_rng(2)
    logit = 4 * (signals.column("mean_logprob") + 0.6) - 1.5 * (signals.column("mean_entropy") - 1.5)
    correct = rng.uniform(size=n) < 1 / (1 + np.exp(-logit))
    return signals, correct


def test_logistic_policy_learns_the_direction_of_the_signals() -> None:
    signals, correct = labelled_signals()
    policy = LogisticPolicy.fit(signals, correct)
    coef = dict(zip(policy.features, policy.coef, strict=True))
    assert coef["mean_logprob"] > 0 and coef["mean_entropy"] < 0
    probability = policy.probability(signals)
    assert probability[correct].mean() > probability[~correct].mean() + 0.15
    decision = policy.decide(signals)
    assert np.array_equal(decision.escalate, probability < 0.5)


def test_logistic_policy_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    signals, correct = labelled_signals()
    policy = LogisticPolicy.fit(signals, correct)
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(signals.values, correct)
    assert np.allclose(policy.probability(signals), reference.predict_proba(signals.values)[:, 1], atol=1e-6)


def test_logistic_policy_round_trips_through_json(tmp_path: Path) -> None:
    signals, correct = labelled_signals()
    policy = LogisticPolicy.fit(signals, correct, threshold=0.7)
    path = tmp_path / "policy.json"
    save_policy(policy, path)
    loaded = load_policy(path)
    assert loaded == policy
    assert np.array_equal(loaded.decide(signals).escalate, policy.decide(signals).escalate)
    assert json.loads(path.read_text())["kind"] == "logistic"


def test_logistic_fit_needs_both_classes() -> None:
    signals = random_signals(20)
    with pytest.raises(ValueError, match="only one class"):
        LogisticPolicy.fit(signals, np.ones(20))


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON"),
    ('{"kind": "logistic", "features": ["n_words"]}', "mean: Field required"),
    ('{"kind": "bayesian"}', "does not match any of the expected tags"),
    ('{"kind": "threshold", "rules": [{"signal": "n_words", "op": "!=", "value": 3}]}', "rules.0.op"),
])
def test_malformed_policy_files_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PolicyFileError, match=message) as error:
        load_policy(path)
    assert str(path) in str(error.value)


def test_missing_policy_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="does not exist"):
        resolve_policy(str(tmp_path / "nope.json"))


def test_cascade_last_tier_always_accepts() -> None:
    reject_everything = ThresholdPolicy(rules=(ThresholdRule(signal="n_tokens", op=">=", value=0),))
    cascade = CascadePolicy([reject_everything, reject_everything, reject_everything])
    signals = random_signals(50)
    assert cascade.decide(0, signals).escalate.all()
    assert cascade.decide(1, signals).escalate.all()
    assert not cascade.decide(2, signals).escalate.any()
    assert isinstance(cascade.policies[-1], AcceptAllPolicy)
    with pytest.raises(IndexError):
        cascade.decide(3, signals)


def test_segment_quantiles_match_numpy_per_answer_and_empty_answers_are_zero() -> None:
    from cascade.policies.features import QUANTILES, segment_quantiles

    rng = np.random.default_rng(0)
    lengths = np.array([3, 0, 1, 7, 2])
    values = rng.normal(size=int(lengths.sum()))
    got = segment_quantiles(values, lengths)
    starts = np.cumsum(lengths) - lengths
    for i, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        expected = np.quantile(values[start:start + n], QUANTILES) if n else np.zeros(len(QUANTILES))
        assert np.allclose(got[i], expected)
