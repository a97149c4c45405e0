"""Tiers whose engine is remote (``openai``) on a real Ray Serve, in front of a real OpenAI-compatible
backend (``tests/benchmarks/openai_echo.py``): called from the ingress by default, with no pool
deployment, escalating and degrading as pool tiers do; ``placement: pool`` still gives them a pool;
a slow model does not make queries queue behind one another in the ingress's batching."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.settings import CascadeSettings
from tests.conftest import echo_backend, free_port, serve_apps

ONE_REPLICA = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}
CHAT = {"model": "cascade", "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
        "max_tokens": 8}


def remote_tier(name: str, model: str, base_url: str, policy: str, **tier: Any) -> dict[str, Any]:
    return {"name": name, "policy": policy, "deployment": ONE_REPLICA, **tier,
            "price": {"input_per_million": 0.1 if name == "small" else 1.0, "output_per_million": 0.2},
            "engine": {"kind": "openai", "model": model, "base_url": base_url, "max_retries": 0}}


def app(small: dict[str, Any], large: dict[str, Any]) -> CascadeSettings:
    return CascadeSettings(tiers=[small, large], server={"use_redis": False, "ingress": ONE_REPLICA})


SLOW_MODEL_S = 1.0  # the slow backend's time per answer


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    yield from echo_backend()


@pytest.fixture(scope="module")
def slow_backend() -> Iterator[str]:
    yield from echo_backend("--delay-ms", str(SLOW_MODEL_S * 1000))


@pytest.fixture(scope="module")
def base_url(backend: str, slow_backend: str) -> Iterator[str]:
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
        "slow": app(remote_tier("small", "small", slow_backend, "v1"), large),
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


def test_queries_arriving_one_by_one_do_not_queue_behind_a_slow_first_tier(base_url: str) -> None:
    """24 requests 15 ms apart, each answered by a model that takes 1 s: every one is answered in
    about that time. A first-pass batch holds its queries until the model answers; with a cap of 4
    batches in flight (the former default) the last ones waited for five rounds of the model. The
    bound leaves 1.5 s for Serve and the ingress on a loaded machine, and fails at three rounds."""
    async def one(client: httpx.AsyncClient, delay_s: float) -> float:
        await asyncio.sleep(delay_s)
        started = time.perf_counter()
        response = await client.post(f"{base_url}/slow/v1/chat/completions", json=CHAT)
        assert response.status_code == 200, response.text
        return time.perf_counter() - started

    async def run() -> list[float]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
            await one(client, 0.0)  # connect and warm up
            return list(await asyncio.gather(*(one(client, 0.015 * i) for i in range(24))))

    latencies = asyncio.run(run())
    assert max(latencies) < 2.5 * SLOW_MODEL_S, [round(s, 2) for s in latencies]
