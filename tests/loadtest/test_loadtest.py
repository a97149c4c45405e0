"""`cascade loadtest` and `cascade plan` as a user runs them, against a real local Ray Serve
deployment (scripted pools, so that the load test is short), with questions from the real data."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.driver import check_target
from loadtest.plan import plan_capacity
from loadtest.workload import parse_mix, sample_workload
from services.settings import CascadeSettings
from tests.conftest import CASCADE, serve_apps


def tier(name: str, policy: str, price: float, **engine_args: Any) -> dict[str, Any]:
    return {"name": name, "policy": policy, "price": {"input_per_million": price, "output_per_million": 2 * price},
            "engine": {"kind": "scripted", "model": f"{name}-model", "engine_args": engine_args},
            "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}}


@pytest.fixture(scope="module")
def deployment() -> Iterator[str]:
    settings = CascadeSettings(
        tiers=[tier("small", "v1", 0.1, uncertain_marker="the"), tier("large", "accept", 1.0, delay_s=0.02)],
        server={"use_redis": False, "ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}})
    with serve_apps({"": settings}) as url:
        yield url


def cascade(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CASCADE, *args], capture_output=True, text=True, timeout=600)


def test_short_load_test_writes_csv_summary_and_plot(deployment: str, tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "results"
    result = cascade("loadtest", "--url", deployment, "--mix", "squad:0.5,hotpotqa:0.5", "--concurrency", "1,4",
                     "--rate", "8", "--requests", "12", "--duration", "60", "--thresholds", "policy,0.95",
                     "--out", str(out), "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    runs = {r["label"]: r for r in summary["runs"]}
    assert set(runs) == {"policy 1c", "policy 4c", "policy 8rps", "t=0.95 1c", "t=0.95 4c", "t=0.95 8rps"}
    assert all(r["ok"] == 12 and r["errors"] == 0 and r["throughput_rps"] > 0 for r in runs.values())
    assert all(r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] <= r["latency_ms"]["p99"] for r in runs.values())
    assert runs["t=0.95 4c"]["escalation_rate"] == 1.0, "every scripted confidence is below 0.95"
    assert runs["policy 4c"]["escalation_rate"] < 1.0
    assert runs["t=0.95 4c"]["cost_per_1k"] > runs["policy 4c"]["cost_per_1k"] > 0
    assert all(r["f1"] is not None and 0.0 <= r["f1"] <= 1.0 for r in runs.values())
    assert set(summary["per_replica_rps"]) == {"small", "large"}
    lines = (out / "requests.csv").read_text().splitlines()
    assert len(lines) == 1 + 6 * 12 and lines[0].startswith("run,dataset,")
    assert len((out / "runs.csv").read_text().splitlines()) == 7
    assert (out / "cost_vs_throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    planned = cascade("plan", "--qps", "20", "--summary", str(out / "summary.json"), "--price", "small=1,large=4",
                      "--json")
    assert planned.returncode == 0, planned.stderr
    capacity = json.loads(planned.stdout)
    small, large = capacity["pools"]
    assert small["replicas"] == max(1, math.ceil(20 / (summary["per_replica_rps"]["small"] * 0.7)))
    assert large["load_qps"] == pytest.approx(20 * capacity["escalation_rate"], rel=1e-3)
    assert capacity["hourly_cost"] == pytest.approx(small["replicas"] * 1 + large["replicas"] * 4)


def test_plan_arithmetic() -> None:
    plan = plan_capacity(100, 0.25, {"small": 50, "large": 10}, {"small": 1.0, "large": 3.0}, utilization=0.5)
    assert [p["replicas"] for p in plan["pools"]] == [4, 5]
    assert plan["hourly_cost"] == 4 * 1.0 + 5 * 3.0
    assert plan["infrastructure_cost_per_1k"] == pytest.approx(19.0 / (100 * 3.6), abs=1e-6)
    with pytest.raises(ValueError, match="no hourly price"):
        plan_capacity(1, 0.1, {"small": 5}, {})


def test_bad_load_test_input_is_refused(data_dir: Path) -> None:
    assert parse_mix("squad:3,hotpotqa:1") == {"squad": 0.75, "hotpotqa": 0.25}
    for spec in ("squad:x", "squad:-1", ""):
        with pytest.raises(ValueError):
            parse_mix(spec)
    with pytest.raises(ValueError, match="not a loopback address"):
        check_target("http://10.1.2.3:8000", allow_remote=False)
    assert check_target("http://10.1.2.3:8000/", allow_remote=True) == "http://10.1.2.3:8000"
    drawn = sample_workload({"squad": 0.5, "hotpotqa": 0.5}, 40, data_dir, seed=1)
    assert len(drawn) == 40 and {r.dataset for r in drawn} == {"squad", "hotpotqa"}
    result = cascade("loadtest", "--url", "http://example.com:8000", "--concurrency", "1")
    assert result.returncode == 2 and "not a loopback address" in result.stderr
