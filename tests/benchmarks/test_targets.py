"""The serving benchmark's verdict on the issues' targets, on made-up trials: no Ray, no load."""

from __future__ import annotations

import pytest

from tests.benchmarks.bench_openai_tiers import Trials, medians, targets

ZERO, FULL = "cascade, tiers in ingress, 0% escalated", "cascade, tiers in ingress, 100% escalated"
WARM = "cache on, misses, warm scope"
SWING = (1.0, 0.8, 1.2)  # the echo's speed in each repeat: the machine's drift, which pairing takes out


def trials_of(rps: dict[str, float], p50: dict[str, float], levels: list[int],
              swings: dict[str, tuple[float, ...]] | None = None) -> Trials:
    """Three repeats per row and level at the given req/s (times the row's swing per repeat) and p50 (ms)."""
    swings = swings or {}
    return {name: {c: [{"rps": rate * swing, "p50": p50[name], "p99": 2 * p50[name]}
                       for swing in swings.get(name, (1.0, 1.0, 1.0))] for c in levels}
            for name, rate in rps.items()}


def printed(trials: Trials, levels: list[int], capsys: pytest.CaptureFixture[str]) -> str:
    targets(trials, medians(trials), levels)
    return capsys.readouterr().out


RPS = {"direct to backend": 2000.0, "bare Serve echo": 1000.0, "bare Serve forwarder": 800.0,
       ZERO: 600.0, FULL: 400.0, WARM: 450.0}
P50 = {"direct to backend": 0.5, "bare Serve echo": 1.0, "bare Serve forwarder": 1.4, ZERO: 2.0, FULL: 3.4, WARM: 2.5}


def test_the_echo_target_is_out_of_reach_where_the_forwarder_misses_it(capsys: pytest.CaptureFixture[str]) -> None:
    out = printed(trials_of(RPS, P50, [1, 16, 64]), [1, 16, 64], capsys)
    assert "at concurrency 1 / 16 / 64: 0.600 / 0.600 / 0.600: NOT met; the bare forwarder itself: 0.800" in out
    assert "out of reach here at concurrency 1, 16, 64" in out
    assert "of the echo at concurrency 1: +1.00 ms: met" in out
    assert "direct-to-backend req/s at concurrency 16 / 64: 0.300 / 0.300: met" in out
    assert "1.700×: NOT met" in out
    assert f"{WARM} ≥ 0.8× cache off (no Redis) at concurrency 16 / 64: 0.750 / 0.750: NOT met" in out
    assert f"{WARM}: p50 within +3 ms of cache off at concurrency 1: +0.50 ms: met" in out


def test_ratios_to_the_echo_are_paired_trial_by_trial(capsys: pytest.CaptureFixture[str]) -> None:
    swings = {"bare Serve echo": SWING, ZERO: (500 / 600, 1.0, 700 / 600)}
    out = printed(trials_of(RPS, P50, [1, 16, 64], swings), [1, 16, 64], capsys)
    assert "0.583 / 0.583 / 0.583: NOT met" in out, "median of 0.5, 0.75 and 0.583; the medians' ratio is 0.6"


def test_a_forwarder_at_the_echo_leaves_the_target_reachable(capsys: pytest.CaptureFixture[str]) -> None:
    rps = {**RPS, "bare Serve forwarder": 950.0, ZERO: 920.0, FULL: 700.0}
    p50 = {**P50, "bare Serve forwarder": 1.1, ZERO: 1.2, FULL: 1.5}
    out = printed(trials_of(rps, p50, [1, 16, 64]), [1, 16, 64], capsys)
    assert "0.920 / 0.920 / 0.920: met" in out
    assert "out of reach" not in out
    assert "1.250×: met" in out


def test_a_target_at_a_level_the_run_left_out_is_not_measured(capsys: pytest.CaptureFixture[str]) -> None:
    out = printed(trials_of(RPS, P50, [16, 64]), [16, 64], capsys)
    assert "at concurrency 1 / 16 / 64: not measured (no run at concurrency 1); the bare forwarder itself: " \
           "0.800 / 0.800" in out
    assert "of the echo at concurrency 1: not measured" in out and "0.300 / 0.300: met" in out
    out = printed(trials_of(RPS, P50, [1]), [1], capsys)
    assert "direct-to-backend req/s at concurrency 16 / 64: not measured (no run at concurrency 16, 64)" in out
    assert f"{WARM} ≥ 0.8× cache off (no Redis) at concurrency 16 / 64: not measured" in out
    assert "of the echo at concurrency 1: +1.00 ms: met" in out
