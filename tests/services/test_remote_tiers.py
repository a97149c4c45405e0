"""Tiers whose engine is remote (``openai``) on a real Ray Serve, in front of a real OpenAI-compatible
backend (``tests/benchmarks/openai_echo.py``): called from the ingress by default, with no pool
deployment, escalating and degrading as pool tiers do; ``placement: pool`` still gives them a pool."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.settings import CascadeSettings
from tests.conftest import free_port, serve_apps, wait_for_http

ONE_REPLICA = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}
CHAT = {"model": "cascade", "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
        "max_tokens": 8}


def remote_tier(name: str, model: str, base_url: str, policy: str, **tier: Any) -> dict[str, Any]:
    return {"name": name, "policy": policy, "deployment": ONE_REPLICA, **tier,
            "price": {"input_per_million": 0.1 if name == "small" else 1.0, "output_per_million": 0.2},
            "engine": {"kind": "openai", "model": model, "base_url": base_url, "max_retries": 0}}


def app(small: dict[str, Any], large: dict[str, Any]) -> CascadeSettings:
    return CascadeSettings(tiers=[small, large], server={"use_redis": False, "ingress": ONE_REPLICA})


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.openai_echo", "--port", str(port)])
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", process, timeout_s=60)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def base_url(backend: str) -> Iterator[str]:
    down = f"http://127.0.0.1:{free_port()}/v1"
    large = remote_tier("large", "large", backend, "accept")
    apps = {
        "confident": app(remote_tier("small", "small", backend, "v1"), large),
        "unsure": app(remote_tier("small", "small-unsure", backend, "v1"), large),
        "small-down": app(remote_tier("small", "small", down, "v1"), large),
        "large-down": app(remote_tier("small", "small-unsure", backend, "v1"),
                          remote_tier("large", "large", down, "accept")),
        "pooled": app(remote_tier("small", "small", backend, "v1", placement="pool"),
                      remote_tier("large", "large", backend, "accept", placement="pool")),
    }
    with serve_apps(apps) as url:
        yield url


def routing(base_url: str, app_name: str) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/{app_name}/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Paris"
    return dict(response.json()["routing"])


def deployments(app_name: str) -> set[str]:
    from ray import serve

    return set(serve.status().applications[app_name].deployments)


def test_remote_tiers_are_called_from_the_ingress_without_pool_deployments(base_url: str) -> None:
    assert deployments("confident") == {"router"}
    answer = routing(base_url, "confident")
    assert answer["tier"] == "small" and not answer["degraded"]
    health = httpx.get(f"{base_url}/confident/healthz", timeout=10).json()
    assert health["status"] == "ok"
    assert {name: state["placement"] for name, state in health["pools"].items()} == {
        "small": "ingress", "large": "ingress"}


def test_an_escalated_answer_pays_for_both_remote_tiers(base_url: str) -> None:
    answer = routing(base_url, "unsure")
    assert answer["tier"] == "large"
    assert [attempt["tier"] for attempt in answer["attempts"]] == ["small", "large"]
    small, large = (attempt["cost"] for attempt in answer["attempts"])
    assert small > 0 and large > 0 and answer["cost"] == pytest.approx(small + large)


def test_an_unreachable_remote_tier_degrades_like_a_pool(base_url: str) -> None:
    assert routing(base_url, "small-down")["tier"] == "large"
    fallback = routing(base_url, "large-down")
    assert fallback["tier"] == "small" and fallback["degraded"]
    assert "127.0.0.1" not in str(fallback), "the backend's address stays in the server's log"
    health = httpx.get(f"{base_url}/large-down/healthz", timeout=10)
    assert health.status_code == 200 and "127.0.0.1" not in health.text


def test_placement_pool_keeps_a_pool_deployment_per_remote_tier(base_url: str) -> None:
    assert deployments("pooled") == {"router", "pool-small", "pool-large"}
    assert routing(base_url, "pooled")["tier"] == "small"
