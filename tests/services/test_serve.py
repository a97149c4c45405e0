"""The router on a real Ray Serve instance, with scripted pools: API shapes, batching, asynchronous
escalation, faults, tenants and bad requests. One Serve instance for the module, one application
per scenario (each with its own route prefix)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis

from cascade.breaker import BreakerConfig
from cascade.cache import CacheConfig
from cascade.thresholds import ControllerConfig, ThresholdTarget
from services.request_ids import RequestIds
from services.settings import CascadeSettings
from tests.conftest import serve_apps

SLOW_LLM_S = 1.5
ID_SECRET = "the signed app's request-id secret"


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


def guarded(redis_url: str) -> CascadeSettings:
    """Redis on (feedback, rate limits; cache and queue off), pools that refuse unreadable or over-long
    input as real engines do, three tenants, one of them rate-limited, and a small body limit."""
    limits = {"context_window": 300, "unreadable_marker": "POISON"}
    return CascadeSettings(
        tiers=[scripted_tier("small", "slm", uncertain_marker="hard", **limits),
               scripted_tier("large", "llm", policy="accept", **limits)],
        redis_url=redis_url, cache={"enabled": False}, queue={"enabled": False},
        server={"use_redis": True, "batch_wait_timeout_s": 0.05, "max_prompt_chars": 2000,
                "max_body_bytes": 64 * 1024, "ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}},
                "tenants": {"a": {"api_keys": ["key-a"]}, "b": {"api_keys": ["key-b"]},
                            "busy": {"api_keys": ["key-busy"], "rate_limit_per_minute": 3}}})


def signed(redis_url: str) -> CascadeSettings:
    """``guarded``, its request ids signed (``server.request_id_secret``; its router's feedback log then
    stores no owner keys)."""
    settings = guarded(redis_url)
    return settings.model_copy(update={"server": settings.server.model_copy(update={"request_id_secret": ID_SECRET})})


def cached(redis_url: str) -> CascadeSettings:
    """``guarded`` with the semantic cache on, in an index of its own; its Redis calls wait 2 s (these tests
    are not of timeouts: a loaded machine's stall is no fault)."""
    return guarded(redis_url).model_copy(update={"cache": CacheConfig(index_name="test-serve-cache"),
                                                 "redis_breaker": BreakerConfig(timeout_ms=2000)})


@pytest.fixture(scope="module")
def base_url(redis_url: str) -> Iterator[str]:
    with serve_apps({**SCENARIOS, "controlled": controlled(redis_url), "guarded": guarded(redis_url),
                     "signed": signed(redis_url), "cached": cached(redis_url)}) as url:
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
    assert min(escalated) >= SLOW_LLM_S
    assert min(escalated) - max(accepted) > SLOW_LLM_S / 2, (
        "the accepted answers came back before the large model's, not with them (a gap, not a time: a loaded "
        "machine slows both)")


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
    assert routing["tier"] == "large"
    kept_by_the_pool = "small tier failed (DeadlineExceededError: slm did not answer the batch within 0.3 s)"
    assert kept_by_the_pool in routing["reason"]


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


@pytest.mark.parametrize("path", ["completions", "chat/completions"])
def test_json_sent_as_plain_text_is_422_naming_the_body(base_url: str, path: str) -> None:
    """What a browser may POST to another site without asking first is not routed to a model."""
    body = {"prompt": "hi"} if path == "completions" else {"messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{base_url}/main/v1/{path}", content=json.dumps(body),
                          headers={"Authorization": "Bearer key-basic", "Content-Type": "text/plain"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "body", response.text


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


def assert_no_server_details(text: str) -> None:
    for leak in ("Traceback", "File \"", "site-packages", "/cascade/", "pid=", "actor_id", "ServeReplica"):
        assert leak not in text, f"{leak!r} in {text[:300]}"


async def test_a_poisoned_request_in_a_concurrent_group_of_8_fails_alone(base_url: str) -> None:
    """One request the pool cannot read (its tokenizer raises for the whole batch) and one with a lone
    surrogate, sent with six others at once: those two fail with a 4xx naming the field, the six are
    answered."""
    async with httpx.AsyncClient(base_url=f"{base_url}/guarded", timeout=60,
                                 headers={"Authorization": "Bearer key-a"}) as api:
        bodies: list[dict[str, Any]] = [{"prompt": f"word{i} easy"} for i in range(8)]
        bodies[3] = {"prompt": "POISON is in this one"}
        bodies[6] = {"prompt": "\ud800 hi"}
        responses = await asyncio.gather(*(  # json.dumps escapes the surrogate as a client's JSON would
            api.post("/v1/completions", content=json.dumps(b), headers={"Content-Type": "application/json"})
            for b in bodies))
    statuses = [r.status_code for r in responses]
    assert statuses == [422 if i == 6 else 400 if i == 3 else 200 for i in range(8)], statuses
    assert [r.json()["choices"][0]["text"] for i, r in enumerate(responses) if i not in (3, 6)] == \
        [f"word{i}" for i in range(8) if i not in (3, 6)]
    poisoned, surrogate = responses[3].json()["error"], responses[6].json()["error"]
    assert poisoned["param"] == "prompt" and poisoned["code"] == "invalid_input"
    assert surrogate["param"] == "prompt" and "lone surrogate" in surrogate["message"]
    for response in responses:
        assert_no_server_details(response.text)


async def test_a_prompt_too_long_for_the_model_is_413_without_a_traceback(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=f"{base_url}/guarded", timeout=60,
                                 headers={"Authorization": "Bearer key-a"}) as api:
        alone = await api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "w " * 400}]})
        grouped = await asyncio.gather(*(api.post("/v1/completions", json={"prompt": p})
                                         for p in ["one easy", "w " * 400, "two easy"]))
    for response in (alone, grouped[1]):
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and "context window of 300 tokens" in error["message"]
        assert "retry-after" not in response.headers and len(response.text) < 600
        assert_no_server_details(response.text)
    assert alone.json()["error"]["param"] == "messages" and grouped[1].json()["error"]["param"] == "prompt"
    assert [grouped[0].status_code, grouped[2].status_code] == [200, 200]


@pytest.mark.parametrize("seed", [-5, 2**63, 2**70])
def test_out_of_range_integers_are_refused_at_the_door(base_url: str, seed: int) -> None:
    response = httpx.post(f"{base_url}/guarded/v1/completions", json={"prompt": "an easy one", "seed": seed},
                          headers={"Authorization": "Bearer key-a"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "seed"
    fine = httpx.post(f"{base_url}/guarded/v1/completions", json={"prompt": "an easy one", "seed": 2**63 - 1},
                      headers={"Authorization": "Bearer key-a"})
    assert fine.status_code == 200


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": ["fine", "  "]}, "prompt.1"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "no question"}]}, "messages"),
])
def test_an_empty_question_is_400_naming_the_field(base_url: str, path: str, body: dict[str, Any],
                                                   param: str) -> None:
    response = httpx.post(f"{base_url}/guarded{path}", json=body, headers={"Authorization": "Bearer key-a"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "no question" in error["message"] and "pydantic" not in error["message"]


def test_a_chat_message_is_counted_once_against_the_prompt_limit(base_url: str) -> None:
    response = httpx.post(f"{base_url}/guarded/v1/chat/completions", headers={"Authorization": "Bearer key-a"},
                          json={"messages": [{"role": "user", "content": "easy " + "x" * 1500}]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("app", ["guarded", "signed"])
def test_a_foreign_tenants_feedback_label_is_refused(base_url: str, app: str) -> None:
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    answer = httpx.post(f"{base_url}/{app}/v1/completions", json={"prompt": "an easy one"}, headers=a).json()
    request_id = answer["routing"]["request_id"]
    label = {"request_id": request_id, "correct": True}
    foreign = httpx.post(f"{base_url}/{app}/v1/feedback", json=label, headers=b)
    assert foreign.status_code == 404 and foreign.json()["error"]["param"] == "request_id"
    unknown = httpx.post(f"{base_url}/{app}/v1/feedback", json={"request_id": "nope", "score": 0.5}, headers=a)
    assert unknown.status_code == 404
    own = httpx.post(f"{base_url}/{app}/v1/feedback", json=label, headers=a)
    assert own.status_code == 202 and own.json()["accepted"]


def test_a_tenant_forgets_its_cached_answers_and_no_one_elses(base_url: str) -> None:
    """``DELETE /v1/cache``: the caller's tenant's cached answers go, and its question is answered by the
    models again; another tenant's stay. 401 without a key, 404 where the cache is off."""
    keys = {tenant: {"Authorization": f"Bearer key-{tenant}"} for tenant in "ab"}

    def hit(tenant: str) -> bool:
        response = httpx.post(f"{base_url}/cached/v1/completions", json={"prompt": "hard: which river is it?"},
                              headers=keys[tenant], timeout=30)
        assert response.status_code == 200, response.text
        return bool(response.json()["routing"]["cache_hit"])

    deadline = time.monotonic() + 15
    while not (hit("a") and hit("b")):  # each tenant's answer is stored off the request path
        assert time.monotonic() < deadline, "both tenants' answers are cached"
        time.sleep(0.2)
    forget = httpx.delete(f"{base_url}/cached/v1/cache", headers=keys["a"])
    assert forget.status_code == 200 and forget.json()["tenant"] == "a" and forget.json()["forgotten"] >= 1, forget.text
    assert not hit("a") and hit("b")
    assert httpx.delete(f"{base_url}/cached/v1/cache").status_code == 401
    off = httpx.delete(f"{base_url}/guarded/v1/cache", headers=keys["a"])
    assert off.status_code == 404 and off.json()["error"]["code"] == "cache_off"


def test_signed_request_ids_carry_their_tenant_and_store_no_owner(base_url: str, redis_url: str) -> None:
    """The signed app's ids verify under its secret for the tenant that asked, and its decisions reach
    the feedback stream with no owner key beside them; the other app's decisions have one."""
    a = {"Authorization": "Bearer key-a"}
    ids = {app: httpx.post(f"{base_url}/{app}/v1/completions", json={"prompt": "an easy one"}, headers=a).json()
           ["routing"]["request_id"] for app in ("signed", "guarded")}
    assert RequestIds(ID_SECRET.encode(), 3600).made_for(ids["signed"], "a")
    assert not RequestIds(ID_SECRET.encode(), 3600).made_for(ids["guarded"], "a")
    store = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while not set(ids.values()) <= {orjson.loads(fields[b"data"])["request_id"]
                                     for _, fields in store.xrevrange("cascade:feedback", count=200)}:
        assert time.monotonic() < deadline, "both decisions reach the feedback stream"
        time.sleep(0.05)
    assert store.get(f"cascade:feedback:owner:{ids['signed']}") is None
    assert store.get(f"cascade:feedback:owner:{ids['guarded']}") == b"a"


def test_over_the_tenant_rate_limit_is_429_with_retry_after(base_url: str) -> None:
    busy, other = {"Authorization": "Bearer key-busy"}, {"Authorization": "Bearer key-a"}
    if time.time() % 60 > 55:  # all in one one-minute window
        time.sleep(61 - time.time() % 60)
    statuses = [httpx.post(f"{base_url}/guarded/v1/completions", json={"prompt": f"easy {i}"}, headers=busy)
                for i in range(5)]
    assert [r.status_code for r in statuses][:3] == [200, 200, 200]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and 1 <= int(limited[0].headers["retry-after"]) <= 61
    assert limited[0].json()["error"]["code"] == "rate_limit_exceeded"
    assert httpx.post(f"{base_url}/guarded/v1/completions", json={"prompt": "easy"}, headers=other).status_code == 200


def test_a_body_over_the_limit_is_413_before_it_is_parsed(base_url: str) -> None:
    response = httpx.post(f"{base_url}/guarded/v1/completions", content=b"{" + b" " * (70 * 1024),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413, "refused before authentication and parsing"
    assert "65536 bytes" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["completions", "feedback"])
def test_a_body_sent_without_its_length_is_413_once_it_grows_past_the_limit(base_url: str, path: str) -> None:
    """Counted as it arrives, on the plain routes and on FastAPI's, whose body parsing would make it a 400."""
    def chunks() -> Iterator[bytes]:
        yield b'{"request_id": "'
        for _ in range(70):
            yield b"x" * 1024

    response = httpx.post(f"{base_url}/guarded/v1/{path}", content=chunks(),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert "65536 bytes" in error["message"] and error["code"] == "request_too_large"


def test_openapi_lists_the_errors_the_server_answers_and_health_reports_redis(base_url: str) -> None:
    document = httpx.get(f"{base_url}/guarded/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions"):
        responses = document["paths"][path]["post"]["responses"]
        assert {"400", "401", "403", "404", "413", "422", "429", "503"} <= set(responses), sorted(responses)
        assert responses["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    health = httpx.get(f"{base_url}/guarded/healthz").json()
    assert health["redis"]["state"] == "closed" and httpx.get(f"{base_url}/main/healthz").json()["redis"] is None
