"""The serving benchmark's verdict on the issues' targets, on made-up trials: no Ray, no load."""

from __future__ import annotations

import pytest

from tests.benchmarks.bench_openai_tiers import Trials, medians, targets

LEVELS = [1, 16, 64]
ZERO, FULL = "cascade, tiers in ingress, 0% escalated", "cascade, tiers in ingress, 100% escalated"


def trials_of(rps: dict[str, float], p50: dict[str, float]) -> Trials:
    """Three identical repeats per row and level, at the given req/s and p50 (ms)."""
    return {name: {c: [{"rps": rate, "p50": p50[name], "p99": 2 * p50[name]}] * 3 for c in LEVELS}
            for name, rate in rps.items()}


def printed(trials: Trials, capsys: pytest.CaptureFixture[str]) -> str:
    targets(trials, medians(trials), LEVELS)
    return capsys.readouterr().out


def test_the_echo_target_is_out_of_reach_where_the_forwarder_misses_it(capsys: pytest.CaptureFixture[str]) -> None:
    rps = {"direct to backend": 2000.0, "bare Serve echo": 1000.0, "bare Serve forwarder": 800.0,
           ZERO: 600.0, FULL: 400.0, "cache on, misses, warm scope": 450.0}
    p50 = {"direct to backend": 0.5, "bare Serve echo": 1.0, "bare Serve forwarder": 1.4, ZERO: 2.0, FULL: 3.4,
           "cache on, misses, warm scope": 2.5}
    out = printed(trials_of(rps, p50), capsys)
    assert "0.60 / 0.60 / 0.60 at concurrency 1 / 16 / 64: NOT met; the bare forwarder itself: 0.80" in out
    assert "out of reach here at concurrency 1, 16, 64" in out
    assert "+1.0 ms: met" in out
    assert "0.30 / 0.30: met" in out
    assert "1.70×: NOT met" in out
    assert "warm scope ≥ 0.8× cache off (no Redis) at 16 / 64: 0.75 / 0.75: NOT met" in out


def test_a_forwarder_at_the_echo_leaves_the_target_reachable(capsys: pytest.CaptureFixture[str]) -> None:
    rps = {"direct to backend": 2000.0, "bare Serve echo": 1000.0, "bare Serve forwarder": 950.0,
           ZERO: 920.0, FULL: 700.0}
    p50 = {"direct to backend": 0.5, "bare Serve echo": 1.0, "bare Serve forwarder": 1.1, ZERO: 1.2, FULL: 1.5}
    out = printed(trials_of(rps, p50), capsys)
    assert "0.92 / 0.92 / 0.92 at concurrency 1 / 16 / 64: met" in out
    assert "out of reach" not in out
    assert "1.25×: met" in out
