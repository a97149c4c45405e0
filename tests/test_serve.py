"""The router on a real Ray Serve instance, with scripted pools: API shapes, batching, asynchronous
escalation, faults, tenants and bad requests. One Serve instance for the module, one application
per scenario (each with its own route prefix)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from cascade.cache import CacheConfig
from cascade.config import CascadeSettings
from cascade.thresholds import ControllerConfig, ThresholdTarget
from tests.conftest import serve_apps

SLOW_LLM_S = 1.5


def scripted_tier(name: str, model: str, *, policy: str = "v1", timeout_s: float | None = None,
                  **engine_args: Any) -> dict[str, Any]:
    return {"name": name, "policy": policy, "timeout_s": timeout_s,
            "engine": {"kind": "scripted", "model": model, "engine_args": engine_args},
            "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}}


def scenario(small: dict[str, Any], large: dict[str, Any], **server: Any) -> CascadeSettings:
    return CascadeSettings(tiers=[small, large], server={
        "use_redis": False, "batch_wait_timeout_s": 0.05, "max_prompt_chars": 2000,
        "ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}, **server})


SMALL = scripted_tier("small", "slm", uncertain_marker="hard")
SCENARIOS = {
    "main": scenario(SMALL, scripted_tier("large", "llm", policy="accept", delay_s=SLOW_LLM_S), tenants={
        "free": {"api_keys": ["key-free"], "profile": "free"},
        "pro": {"api_keys": ["key-pro"], "profile": "pro"},
        "basic": {"api_keys": ["key-basic"]},
    }, profiles={
        "default": {},
        "free": {"max_tier": "small"},
        "pro": {"threshold": 0.95, "allow_overrides": True},
    }),
    "slm-down": scenario(scripted_tier("small", "slm", fail="pool crashed"),
                         scripted_tier("large", "llm", policy="accept")),
    "slm-slow": scenario(scripted_tier("small", "slm", timeout_s=0.3, delay_s=5.0),
                         scripted_tier("large", "llm", policy="accept")),
    "llm-down": scenario(SMALL, scripted_tier("large", "llm", policy="accept", fail="pool crashed")),
    "all-down": scenario(scripted_tier("small", "slm", fail="pool crashed"),
                         scripted_tier("large", "llm", policy="accept", fail="pool crashed")),
}


def controlled(redis_url: str) -> CascadeSettings:
    """Redis on, the cache off, and the threshold controller deployed to keep escalations at zero."""
    settings = scenario(SMALL, scripted_tier("large", "llm", policy="accept"))
    return settings.model_copy(update={
        "redis_url": redis_url, "cache": CacheConfig(enabled=False),
        "server": settings.server.model_copy(update={"use_redis": True}),
        "controller": ControllerConfig(target=ThresholdTarget(kind="escalation_budget", value=0.0, tier="small"),
                                       min_samples=10, max_step=1.0, hysteresis=0.0)})


@pytest.fixture(scope="module")
def base_url(redis_url: str) -> Iterator[str]:
    with serve_apps({**SCENARIOS, "controlled": controlled(redis_url)}) as url:
        yield url


def client(base_url: str, app: str = "main", key: str = "key-basic") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/{app}/v1", api_key=key, max_retries=0)


def routing_of(response: Any) -> dict[str, Any]:
    extra = response.model_extra or {}
    return dict(extra["routing"])


def test_chat_round_trip_with_routing_object(base_url: str) -> None:
    response = client(base_url).chat.completions.create(
        model="cascade", messages=[{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Paris is the capital of France?"}])
    assert response.choices[0].message.content == "Paris"
    assert response.choices[0].finish_reason == "stop"
    routing = routing_of(response)
    assert routing["tier"] == "small" and routing["model"] == "slm" and routing["tenant"] == "basic"
    assert routing["confidence"] == pytest.approx(0.9, abs=1e-6)
    assert routing["signals"]["n_tokens"] == 1 and routing["cost"] >= 0 and routing["cache_hit"] is False
    assert {"tier:small", "score:small"} <= set(routing["latency_ms"])
    assert response.usage is not None and response.usage.total_tokens > 0


def test_completions_round_trip_one_choice_per_prompt(base_url: str) -> None:
    response = client(base_url).completions.create(model="cascade", prompt=["Rome is old", "Oslo is cold"])
    assert [c.text for c in response.choices] == ["Rome", "Oslo"]
    assert [c.index for c in response.choices] == [0, 1]
    assert [r["tier"] for r in (response.model_extra or {})["routings"]] == ["small", "small"]


def test_streaming_chat_and_completions(base_url: str) -> None:
    api = client(base_url)
    chunks = list(api.chat.completions.create(model="cascade", stream=True,
                                              messages=[{"role": "user", "content": "hard question here"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hard"
    assert routing_of(chunks[0])["tier"] == "large"
    assert chunks[-1].choices[0].finish_reason == "stop"
    pieces = list(api.completions.create(model="cascade", prompt="Lima is high", stream=True))
    assert "".join(p.choices[0].text for p in pieces) == "Lima"
    assert routing_of(pieces[0])["tier"] == "small"


async def test_concurrent_requests_are_batched(base_url: str) -> None:
    api = openai.AsyncOpenAI(base_url=f"{base_url}/main/v1", api_key="key-basic", max_retries=0)
    responses = await asyncio.gather(*(
        api.completions.create(model="cascade", prompt=f"word{i} easy") for i in range(16)))
    sizes = [routing_of(r)["batch_size"] for r in responses]
    assert [r.choices[0].text for r in responses] == [f"word{i}" for i in range(16)]
    assert max(sizes) > 1, sizes


async def test_accepted_answers_do_not_wait_for_escalations(base_url: str) -> None:
    api = openai.AsyncOpenAI(base_url=f"{base_url}/main/v1", api_key="key-basic", max_retries=0)
    started = time.monotonic()

    async def timed(prompt: str) -> tuple[str, float]:
        response = await api.completions.create(model="cascade", prompt=prompt)
        return routing_of(response)["tier"], time.monotonic() - started

    results = await asyncio.gather(*(timed(f"q{i} {'hard' if i % 2 else 'easy'}") for i in range(8)))
    accepted = [t for tier, t in results if tier == "small"]
    escalated = [t for tier, t in results if tier == "large"]
    assert len(accepted) == 4 and len(escalated) == 4
    assert max(accepted) < SLOW_LLM_S <= min(escalated)


def test_small_pool_failing_goes_to_large(base_url: str) -> None:
    response = client(base_url, "slm-down").chat.completions.create(
        model="cascade", messages=[{"role": "user", "content": "Where is Paris?"}])
    routing = routing_of(response)
    assert routing["tier"] == "large" and not routing["degraded"]
    assert "small tier failed" in routing["reason"] and "pool crashed" in routing["reason"]


def test_small_pool_timing_out_goes_to_large(base_url: str) -> None:
    response = client(base_url, "slm-slow").chat.completions.create(
        model="cascade", messages=[{"role": "user", "content": "Where is Paris?"}])
    routing = routing_of(response)
    assert routing["tier"] == "large" and "small tier failed (TimeoutError" in routing["reason"]


def test_large_pool_failing_returns_small_answer_degraded(base_url: str) -> None:
    response = client(base_url, "llm-down").chat.completions.create(
        model="cascade", messages=[{"role": "user", "content": "a hard question"}])
    routing = routing_of(response)
    assert response.choices[0].message.content == "a"
    assert routing["tier"] == "small" and routing["degraded"] is True
    assert "large tier failed" in routing["reason"]


def test_both_pools_failing_is_503(base_url: str) -> None:
    response = httpx.post(f"{base_url}/all-down/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "anything"}]})
    assert response.status_code == 503
    assert "no model pool could answer" in response.json()["error"]["message"]
    assert response.headers["retry-after"] == "5"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 422, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 422, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-x"}, 404, "model"),
    ({"messages": [{"role": "user", "content": "x" * 5000}]}, 413, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "routing": {"tier": "large"}}, 403, "routing"),
])
def test_bad_requests_get_4xx_naming_the_field(base_url: str, body: dict[str, Any], status: int, param: str) -> None:
    response = httpx.post(f"{base_url}/main/v1/chat/completions", json=body,
                          headers={"Authorization": "Bearer key-basic"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_invalid_json_is_422(base_url: str) -> None:
    response = httpx.post(f"{base_url}/main/v1/completions", content=b"{not json",
                          headers={"Authorization": "Bearer key-basic", "Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic key-free"}])
def test_unknown_or_missing_key_is_401(base_url: str, headers: dict[str, str]) -> None:
    response = httpx.post(f"{base_url}/main/v1/completions", json={"prompt": "hi"}, headers=headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_free_plan_is_capped_at_the_small_model(base_url: str) -> None:
    response = client(base_url, key="key-free").completions.create(model="cascade", prompt="a hard one")
    routing = routing_of(response)
    assert routing["tier"] == "small" and routing["tenant"] == "free"
    assert "highest tier this query's plan allows" in routing["reason"]
    with pytest.raises(openai.PermissionDeniedError):
        client(base_url, key="key-free").completions.create(model="large", prompt="a question")


def test_premium_plan_threshold_and_permitted_overrides(base_url: str) -> None:
    pro = client(base_url, key="key-pro")
    strict = routing_of(pro.completions.create(model="cascade", prompt="an easy one"))
    assert strict["tier"] == "large" and "threshold 0.950" in strict["reason"]
    lenient = routing_of(pro.completions.create(model="cascade", prompt="an easy one",
                                                extra_body={"routing": {"threshold": 0.5}}))
    assert lenient["tier"] == "small"
    forced = routing_of(pro.completions.create(model="large", prompt="an easy one"))
    assert forced["tier"] == "large" and len(forced["attempts"]) == 1 and "forced" in forced["reason"]


def test_models_and_health(base_url: str) -> None:
    models = client(base_url).models.list()
    assert [m.id for m in models.data] == ["cascade", "small", "large"]
    health = httpx.get(f"{base_url}/main/healthz").json()
    assert health["status"] == "ok" and set(health["pools"]) == {"small", "large"}
    assert all(p["ready"] for p in health["pools"].values())


def test_feedback_without_redis_is_503(base_url: str) -> None:
    response = httpx.post(f"{base_url}/main/v1/feedback", json={"request_id": "r1", "correct": True},
                          headers={"Authorization": "Bearer key-basic"})
    assert response.status_code == 503 and "feedback log is off" in response.json()["error"]["message"]


def test_threshold_controller_deployment_moves_the_live_threshold(base_url: str) -> None:
    """Hard questions escalate by policy; the controller, held to a zero escalation budget, lowers the
    small tier's threshold until the router accepts them, without a restart."""
    api = client(base_url, "controlled")
    first = routing_of(api.completions.create(model="cascade", prompt="a hard one"))
    assert first["tier"] == "large"
    for i in range(12):
        api.completions.create(model="cascade", prompt=f"hard question {i}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        routing = routing_of(api.completions.create(model="cascade", prompt="another hard one"))
        if "live threshold" in routing["reason"]:
            break
        time.sleep(0.5)
    assert routing["tier"] == "small" and "live threshold" in routing["reason"], routing["reason"]
    health = httpx.get(f"{base_url}/controlled/healthz").json()
    assert health["controller"]["running"] and health["controller"]["tenants"] >= 1
