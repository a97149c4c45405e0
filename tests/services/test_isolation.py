"""No request can fail another, without Ray: validation at the door, errors that keep their type and
say nothing of the server, per-query isolation inside the router's batches, body limits and the
Redis circuit breaker's states."""

from __future__ import annotations

import math
import pickle
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from cascade.breaker import BreakerConfig, CircuitOpenError, RedisBreaker, RedisFaultError
from cascade.engines.base import InvalidInputError, PromptTooLongError
from cascade.engines.llamacpp import LlamaCppEngine
from cascade.engines.scripted import ScriptedEngine
from cascade.errors import public_message
from cascade.policies import PRESETS, AcceptAllPolicy
from cascade.router import Router, Tier
from cascade.schemas import GenerationParams, Message, Query
from services.batch.schema import parse_line
from services.ingress import _store_down
from services.limits import BodyLimitMiddleware, BodyLimits
from services.openai_api import ApiError, ChatCompletionRequest, CompletionRequest, check_prompt_size
from services.settings import CascadeSettings
from services.tenants import TenantDirectory
from tests.cascade.test_router import large_script, small_script


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "\ud800 hi"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi \udfff"}]}]},
    {"messages": [{"role": "user", "content": "hi"}], "context": ["ok", "\ud800"]},
    {"messages": [{"role": "user", "content": "hi"}], "stop": "\ud800"},
    {"messages": [{"role": "user", "content": "hi"}], "seed": -5},
    {"messages": [{"role": "user", "content": "hi"}], "seed": 2**70},
])
def test_invalid_text_and_out_of_range_integers_are_refused_at_the_door(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as raised:
        ChatCompletionRequest.model_validate(body)
    message = str(raised.value)
    assert "lone surrogate" in message or "seed" in message


@pytest.mark.parametrize("stop", ["", ["Paris", ""]])
def test_an_empty_stop_sequence_is_refused_at_the_door(stop: str | list[str]) -> None:
    """It would stop before the first token; vLLM refuses it, for the whole batch it came in."""
    with pytest.raises(ValueError, match="stop sequence must not be empty") as raised:
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "stop": stop})
    assert raised.value.errors()[0]["loc"][0] == "stop"  # type: ignore[attr-defined]


@pytest.mark.parametrize("temperature", [1e-40, 5e-324, 9.9e-3])
def test_a_temperature_too_small_to_sample_at_is_raised_to_vllms_floor(temperature: float) -> None:
    """Logits divided by 1e-40 overflow: llama.cpp's sampler met NaN probabilities, for the whole batch.
    vLLM raises such a temperature to 0.01; every tier does the same."""
    request = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}],
                                                    "temperature": temperature})
    assert request.params(GenerationParams(), 4096).temperature == 0.01
    assert GenerationParams(temperature=temperature).temperature == 0.01
    assert GenerationParams(temperature=0.0).temperature == 0.0 and GenerationParams(temperature=0.5).temperature == 0.5
    logprobs = np.log(np.array([0.2, 0.5, 0.3], np.float32))
    clamped = GenerationParams(temperature=temperature).temperature
    assert LlamaCppEngine._choose(logprobs, clamped, 1.0, np.random.default_rng(0)) in {0, 1, 2}
    assert LlamaCppEngine._choose(logprobs, 1e-40, 1.0, np.random.default_rng(0)) == 1, "the likeliest, not NaN"


def test_core_queries_refuse_invalid_text_and_seeds_too() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        Query(prompt="\ud800 hi")
    with pytest.raises(ValueError, match="seed"):
        Query(prompt="hi", params={"seed": 2**64})  # type: ignore[arg-type]
    assert Query(prompt="héllo 東京 🙂", params={"seed": 2**63 - 1}).params.seed == 2**63 - 1  # type: ignore[arg-type]


def test_prompt_too_long_error_survives_pickling_with_its_fields() -> None:
    error = pickle.loads(pickle.dumps(PromptTooLongError("q1", 3000, 24, 2048)))
    assert isinstance(error, PromptTooLongError)
    assert (error.query_id, error.prompt_tokens, error.max_tokens, error.context_window) == ("q1", 3000, 24, 2048)
    unreadable = pickle.loads(pickle.dumps(InvalidInputError("q2", "cannot read")))
    assert isinstance(unreadable, InvalidInputError) and unreadable.reason == "cannot read"


def test_public_messages_carry_no_paths_tracebacks_or_ray_ids() -> None:
    ray_like = RuntimeError("ray::ServeReplica:cascade:pool-small.generate() (pid=4242, ip=10.1.2.3, "
                            "actor_id=9f8e7d6c)\n  File \"/srv/app/cascade/engines/llamacpp.py\", line 143\n"
                            "Traceback (most recent call last): ...")
    message = public_message(ray_like)
    assert message.startswith("RuntimeError: ray::ServeReplica")
    for leak in ("4242", "10.1.2.3", "9f8e7d6c", "/srv/app", "Traceback", "\n"):
        assert leak not in message
    assert public_message(FileNotFoundError("no model at /root/.cache/x.gguf")) == \
        "FileNotFoundError: no model at <path>"
    assert len(public_message(ValueError("x" * 5000))) == 300


def test_a_chat_prompt_is_counted_once() -> None:
    query = Query(messages=[Message(role="system", content="s" * 100), Message(role="user", content="u" * 20_000)],
                  context=["c" * 10])
    check_prompt_size(query, 20_110, "messages")
    with pytest.raises(ApiError) as raised:
        check_prompt_size(query, 20_109, "messages")
    assert raised.value.status == 413 and raised.value.param == "messages"
    assert "20110 characters" in raised.value.message and "20109" in raised.value.message


@pytest.mark.parametrize(("model", "body", "param"), [
    (CompletionRequest, {"prompt": "   "}, "prompt"),
    (CompletionRequest, {"prompt": ["ok", ""]}, "prompt.1"),
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": " "}]}, "messages"),
    (ChatCompletionRequest, {"messages": [{"role": "system", "content": "only a system message"}]}, "messages"),
])
def test_an_empty_question_is_a_400_naming_its_field(model: Any, body: dict[str, Any], param: str) -> None:
    from services.openai_api import chat_queries, completion_queries

    request = model.model_validate(body)
    build = completion_queries if model is CompletionRequest else chat_queries
    with pytest.raises(ApiError) as raised:
        build(request, "t", GenerationParams(), Query(prompt="x").routing)
    assert raised.value.status == 400 and raised.value.param == param
    assert "no question" in raised.value.message and "pydantic" not in raised.value.message


def batch_line(custom_id: str, body: dict[str, Any], url: str = "/v1/completions") -> bytes:
    import orjson

    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_batch_lines_get_the_interactive_limits_each_alone() -> None:
    settings = CascadeSettings(server={"max_prompt_chars": 1000, "max_tokens_limit": 64})
    tenants = TenantDirectory(settings.server, ["small", "large"])
    caller = tenants.caller(None)

    def parse(line: bytes, url: str = "/v1/completions") -> Any:
        return parse_line(line, "x", url, caller, tenants, settings)

    long = parse(batch_line("long", {"prompt": "w " * 600}))
    assert long.query is None and long.status == 413 and long.error is not None
    assert long.error["code"] == "prompt_too_long" and "1000" in long.error["message"]
    assert long.error["param"] == "body.prompt"
    chat = parse(batch_line("chat", {"messages": [{"role": "user", "content": "u" * 600}]}, "/v1/chat/completions"),
                 "/v1/chat/completions")
    assert chat.query is not None, "a 600-character message is 600 characters, not 1200"
    tokens = parse(batch_line("tokens", {"prompt": "q", "max_tokens": 65}))
    assert tokens.status == 400 and tokens.error is not None and "max_tokens" in tokens.error["message"]
    seed = parse(batch_line("seed", {"prompt": "q", "seed": -5}))
    assert seed.query is None and seed.error is not None and "seed" in seed.error["message"]
    surrogate = parse(b'{"custom_id": "s", "method": "POST", "url": "/v1/completions", "body": {"prompt": "\\ud800"}}')
    assert surrogate.query is None and surrogate.error is not None
    assert parse(batch_line("fine", {"prompt": "What is 2+2?"})).query is not None


def two_tiers(small: ScriptedEngine, large: ScriptedEngine | None = None) -> Router:
    return Router([Tier("small", small, PRESETS["v1"]),
                   Tier("large", large or ScriptedEngine("large-model", large_script), AcceptAllPolicy())])


async def test_an_unreadable_query_fails_alone_and_its_batch_mates_are_answered() -> None:
    small = ScriptedEngine("small-model", small_script, unreadable_marker="POISON")
    large = ScriptedEngine("large-model", large_script, unreadable_marker="POISON")
    router = two_tiers(small, large)
    batch = [Query(prompt=f"easy question {i}") for i in range(7)]
    batch.insert(3, Query(prompt="easy POISON question"))
    trails = await router.begin(batch)
    assert [t.rejected is not None for t in trails] == [i == 3 for i in range(8)]
    assert isinstance(trails[3].rejected, InvalidInputError)
    assert "UnicodeEncodeError" in trails[3].rejected.reason and "POISON" not in trails[3].rejected.reason
    answers = [await router.finish(t) for t in trails if t.rejected is None]
    assert len(answers) == 7 and all(a.tier == "small" for a in answers)
    assert len(small.calls) <= 1 + 2 * 3, "halving finds the culprit in a few calls, not one per query"


async def test_a_prompt_too_long_for_the_model_is_rejected_alone() -> None:
    small = ScriptedEngine("small-model", small_script, context_window=100)
    router = two_tiers(small)
    batch = [Query(prompt="easy one"), Query(prompt="easy " + "word " * 200), Query(prompt="easy two")]
    trails = await router.begin(batch)
    assert isinstance(trails[1].rejected, PromptTooLongError) and trails[1].rejected.query_id == batch[1].id
    assert trails[0].result is not None and trails[2].result is not None
    with pytest.raises(PromptTooLongError):
        await router.finish(trails[1])


async def test_a_failing_pool_still_degrades_rather_than_rejecting() -> None:
    router = two_tiers(ScriptedEngine("small-model", small_script, failure=RuntimeError("down /opt/pool.py")))
    answers = await router.route([Query(prompt="easy a"), Query(prompt="easy b")])
    assert [a.tier for a in answers] == ["large", "large"]
    assert all("/opt" not in a.reason and "small tier failed (EngineError" in a.reason for a in answers)


def limited_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware, limits=BodyLimits(default=1024, uploads=4096))

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/v1/files")
    async def files(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/v1/feedback")
    async def feedback(body: dict[str, str]) -> dict[str, int]:  # a body FastAPI parses, as the ingress's routes
        return {"fields": len(body)}

    return app


async def test_bodies_over_the_limit_are_413_with_the_limit_before_parsing() -> None:
    transport = httpx.ASGITransport(app=limited_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/v1/completions", content=b"x" * 1024)).json() == {"bytes": 1024}
        refused = await client.post("/v1/completions", content=b"x" * 1025)
        assert refused.status_code == 413 and "limit of 1024 bytes" in refused.json()["error"]["message"]
        assert (await client.post("/v1/files", content=b"x" * 4000)).status_code == 200
        assert (await client.post("/v1/files", content=b"x" * 4097)).status_code == 413

        async def chunks() -> Any:
            for _ in range(5):
                yield b"x" * 400

        streamed = await client.post("/v1/completions", content=chunks())
        assert streamed.status_code == 413, "a body without Content-Length is counted as it arrives"
        parsed = await client.post("/v1/feedback", content=chunks(), headers={"Content-Type": "application/json"})
        assert parsed.status_code == 413 and "limit of 1024 bytes" in parsed.text, "not FastAPI's 400 for a parse error"
        assert parsed.headers["connection"] == "close"


async def test_the_breaker_skips_redis_during_the_cool_down_then_probes() -> None:
    now = [0.0]
    breaker = RedisBreaker(BreakerConfig(timeout_ms=20, cooldown_s=5), clock=lambda: now[0])
    calls: list[str] = []

    async def ok() -> str:
        calls.append("ok")
        return "pong"

    async def hangs() -> str:
        import asyncio

        calls.append("hang")
        await asyncio.sleep(10)
        return "late"

    assert await breaker.call(ok) == "pong" and breaker.state == "closed" and breaker.open_for_s() == 0.0
    with pytest.raises(RedisFaultError, match="no answer within 20 ms") as fault:
        await breaker.call(hangs)
    assert breaker.state == "open" and fault.value.retry_after_s == 5
    for waited in (0.0, 1.0, 3.6):
        now[0] = waited
        with pytest.raises(CircuitOpenError) as refused:
            await breaker.call(ok)
        assert refused.value.retry_after_s == pytest.approx(5 - waited)
        store_down = await _store_down(None, refused.value)  # type: ignore[arg-type]
        assert store_down.status_code == 503 and store_down.headers["retry-after"] == str(math.ceil(5 - waited))
    assert calls == ["ok", "hang"] and breaker.skipped == 3, "no call is attempted while open"
    for error, header in ((CircuitOpenError("skipped", 0.2), "1"), (RedisConnectionError("refused"), "10")):
        assert (await _store_down(None, error)).headers["retry-after"] == header  # type: ignore[arg-type]
    now[0] = 5.1
    assert breaker.state == "half-open"
    assert await breaker.call(ok) == "pong" and breaker.state == "closed"
    assert breaker.status()["failures"] == 1


def test_a_server_limit_above_the_query_bound_or_below_the_default_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match=r"server\.max_tokens_limit\n.*less than or equal to 4096"):
        CascadeSettings(server={"max_tokens_limit": 8192})
    with pytest.raises(ValidationError, match=r"generation\.max_tokens 64 exceeds server\.max_tokens_limit 32"):
        CascadeSettings(server={"max_tokens_limit": 32}, generation={"max_tokens": 64})
