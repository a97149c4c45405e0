"""Semantic cache, feedback log and threshold control against a real Redis started by the launcher."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from cascade.breaker import BreakerConfig, RedisBreaker, RedisFaultError
from cascade.cache import CacheConfig, SemanticCache, entry_tags, holds_answers, hybrid_policy, tag_value
from cascade.embeddings import MiniLMEmbedder
from cascade.engines.scripted import ScriptedEngine, ScriptedReply
from cascade.factory import build_router
from cascade.feedback import FeedbackConfig, FeedbackLog, decision_record, outcome_record
from cascade.local_redis import LocalRedis, RedisSearchMissingError, has_search, server_binary
from cascade.policies import PRESETS, AcceptAllPolicy
from cascade.policies.threshold import ThresholdPolicy, ThresholdRule
from cascade.router import Router, Tier
from cascade.schemas import Query, RoutingControls
from cascade.thresholds import (
    ControllerConfig,
    LiveThresholds,
    ThresholdController,
    ThresholdTarget,
    field_name,
)
from services.settings import CascadeSettings, load_service_settings
from tests.cascade.test_router import large_script, small_script
from tests.conftest import free_port

PARIS = "The capital of France is Paris."


@pytest.fixture(scope="module")
def local_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(port=free_port(), state_dir=tmp_path_factory.mktemp("redis-state"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@pytest.fixture
async def cache(local_redis: LocalRedis, embedder: MiniLMEmbedder, request: pytest.FixtureRequest,
                ) -> AsyncIterator[SemanticCache]:
    # every answer indexed from a partition's first request on: these tests are of the index (holding a new
    # partition's first answer: test_a_partition_asked_once_holds_its_answer_unembedded_until_asked_again)
    config = CacheConfig(index_name=f"test-{request.node.name[:40]}", ttl_s=60, hold_new_partitions=False)
    patient = RedisBreaker(BreakerConfig(timeout_ms=2000))  # these tests are not of timeouts: a stall is no fault
    semantic = SemanticCache(local_redis.url, config, embedder, breaker=patient)
    yield semantic
    await semantic.close()


def two_tier_router(**services: object) -> Router:
    return Router([Tier("small", ScriptedEngine("small-model", small_script), PRESETS["v1"]),
                   Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy())],
                  **services)  # type: ignore[arg-type]


async def search_calls(cache: SemanticCache) -> int:
    """How many FT.SEARCH commands the cache's Redis has run (``INFO commandstats``)."""
    return int((await cache._client.info("commandstats")).get("cmdstat_FT.SEARCH", {}).get("calls", 0))


def test_launcher_loads_search_and_stops_cleanly(tmp_path: Path) -> None:
    server = LocalRedis(port=free_port(), state_dir=tmp_path)
    url = server.start()
    assert server.start() == url, "a second start finds the running server"
    assert has_search(redis.Redis.from_url(url)) and server.pid() is not None
    assert server.stop() and not server.answering() and server.pid() is None
    assert not server.stop()


def test_the_launcher_sees_a_stopped_or_frozen_server_at_once() -> None:
    """A probe of a port nothing listens on, or of a server that accepts and never answers (a frozen
    one), says so within its timeout: redis-py 7's default retries made the first take about 7 s on
    every start and stop, and the second never returned."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        for port in (free_port(), silent.getsockname()[1]):
            began = time.monotonic()
            assert not LocalRedis(port=port).answering()
            assert time.monotonic() - began < 2.0, f"probe of port {port} took {time.monotonic() - began:.1f} s"


def scripted_settings(redis_url: str) -> CascadeSettings:
    return load_service_settings(redis_url=redis_url, tiers=[
        {"name": "small", "engine": {"kind": "scripted", "model": "s"}, "policy": "v1"},
        {"name": "large", "engine": {"kind": "scripted", "model": "l"}}])


def test_a_redis_without_search_stops_start_up_with_a_message(tmp_path: Path) -> None:
    port = free_port()
    plain = subprocess.Popen([str(server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        LocalRedis(port=port).start()  # answers already: the launcher leaves it as it is
        url = f"redis://127.0.0.1:{port}/0"
        with pytest.raises(RedisSearchMissingError, match="has no search module"):
            build_router(scripted_settings(url), with_redis=True)
        without_cache = scripted_settings(url).model_copy(update={"cache": CacheConfig(enabled=False)})
        assert build_router(without_cache, with_redis=True).cache is None
    finally:
        plain.terminate()
        plain.wait()


async def test_redis_unreachable_at_start_still_serves(embedder: MiniLMEmbedder) -> None:
    router = build_router(scripted_settings(f"redis://127.0.0.1:{free_port()}/0"), with_redis=True)
    assert router.cache is not None and router.feedback is not None
    router.cache.embedder = embedder
    answers = await router.route([Query(prompt=f"easy question {i}") for i in range(3)])
    assert len(answers) == 3 and not any(a.cache_hit for a in answers)
    assert router.feedback.buffered == 3


async def test_a_deployment_with_another_model_never_reads_the_old_models_answers(
        local_redis: LocalRedis, request: pytest.FixtureRequest) -> None:
    """Two deployments on one Redis and one index, the second with another small model (as after an
    upgrade): its queries miss the first one's answers, which the first still finds."""
    settings = scripted_settings(local_redis.url)
    settings.cache = CacheConfig(index_name=f"test-{request.node.name[:40]}", hold_new_partitions=False)
    upgraded = settings.model_copy(deep=True)
    upgraded.tiers[0].engine = upgraded.tiers[0].engine.model_copy(update={"model": "s2"})
    routers = [build_router(s, with_redis=True) for s in (settings, upgraded, settings)]
    question = Query(prompt="hard: which river flows through Lyon?", context=[PARIS])
    [first] = await routers[0].route([question])
    [other] = await routers[1].route([question.model_copy(update={"id": "b"})])
    [same] = await routers[2].route([question.model_copy(update={"id": "c"})])
    assert (first.cache_hit, other.cache_hit, same.cache_hit) == (False, False, True)
    assert (first.model, other.model, same.model) == ("s", "s2", "s")
    for router in routers:
        await router.close()


async def test_paraphrase_hits_and_unrelated_question_misses(cache: SemanticCache) -> None:
    router = two_tier_router(cache=cache)
    [first] = await router.route([Query(prompt="easy: what is the capital of France?", context=[PARIS])])
    assert not first.cache_hit
    answers = await router.route([Query(prompt="easy: what's the captial of France", context=[PARIS]),
                                  Query(prompt="easy: how tall is Mount Everest?", context=[PARIS])])
    assert answers[0].cache_hit and answers[0].answer == first.answer and answers[0].cost == 0.0
    assert not answers[1].cache_hit
    assert cache.stats.hits == 1 and cache.stats.misses == 2


async def test_the_default_cache_keeps_opposite_and_cross_context_questions_apart(local_redis: LocalRedis) -> None:
    """The default embedder and threshold (the static embedding, the wording guard): a paraphrase
    hits; the opposite question, a question about another document and another tenant's miss. (Two
    questions of a new partition asked together are both indexed at once, not held.)"""
    cache = SemanticCache(local_redis.url, CacheConfig(index_name="test-default", ttl_s=60))
    assert cache.config.embedder.kind == "static" and cache.index_name == "test-default-static-minilm-256-v4"
    router = two_tier_router(cache=cache)
    asked = "hard: what is the largest city in France?"
    [first, _] = await router.route([Query(prompt=asked, context=[PARIS]),
                                     Query(prompt="hard: what is the capital of France?", context=[PARIS])])
    paraphrase, opposite, negated, elsewhere, foreign = await router.route([
        Query(prompt="hard: what's the largset city in France", context=[PARIS]),
        Query(prompt="hard: what is the smallest city in France?", context=[PARIS]),
        Query(prompt="hard: what is not the largest city in France?", context=[PARIS]),
        Query(prompt=asked, context=["Lyon is the largest city of the Auvergne-Rhone-Alpes region."]),
        Query(prompt=asked, context=[PARIS], tenant="someone-else")])
    assert paraphrase.cache_hit and paraphrase.answer == first.answer
    assert not any(a.cache_hit for a in (opposite, negated, elsewhere, foreign))
    await cache.close()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_lookup_reads_the_search_reply_of_either_protocol(local_redis: LocalRedis, protocol: int) -> None:
    """The cache's own FT.SEARCH reply parsing, over RESP2 and RESP3 (a ``protocol=3`` Redis URL)."""
    cache = SemanticCache(f"{local_redis.url}?protocol={protocol}",
                          CacheConfig(index_name=f"test-resp{protocol}", hold_new_partitions=False))
    router = two_tier_router(cache=cache)
    [first] = await router.route([Query(prompt="hard: which river flows through Paris?", context=[PARIS])])
    cache._sizes.clear()  # read the partition's new count now, not after ``marker_memo_s``
    [again] = await router.route([Query(prompt="hard: which river flows through Paris ?", context=[PARIS])])
    assert again.cache_hit and again.answer == first.answer and "distance 0.0" in again.reason
    await cache.close()


def test_clients_pack_commands_in_c_on_the_connection_their_url_asks_for() -> None:
    from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

    from cascade.redis_clients import connect

    for url, kind in [("redis://localhost:6379/0", Connection), ("rediss://localhost:6380/0", SSLConnection),
                      ("unix:///tmp/redis.sock", UnixDomainSocketConnection)]:
        connection = connect(url).connection_pool.make_connection()
        assert isinstance(connection, kind) and connection.pack_command("SET", "k", 1.5) == [
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n"]
        assert type(connection).pack_command is not kind.pack_command


async def test_tenants_never_see_each_others_entries(cache: SemanticCache) -> None:
    router = two_tier_router(cache=cache)
    query = {"prompt": "hard: what is the capital of France?", "context": [PARIS]}
    await router.route([Query(tenant="tenant-a", **query)])  # type: ignore[arg-type]
    [other] = await router.route([Query(tenant="tenant-b", **query)])  # type: ignore[arg-type]
    [same] = await router.route([Query(tenant="tenant-a", **query)])  # type: ignore[arg-type]
    assert not other.cache_hit and same.cache_hit


async def test_same_question_with_another_context_misses(cache: SemanticCache) -> None:
    router = two_tier_router(cache=cache)
    await router.route([Query(prompt="hard: what is the capital?", context=[PARIS])])
    [other_document] = await router.route([Query(prompt="hard: what is the capital?",
                                                 context=["The capital of Italy is Rome."])])
    [other_params] = await router.route([Query(prompt="hard: what is the capital?", context=[PARIS],
                                               params={"max_tokens": 5})])  # type: ignore[arg-type]
    assert not other_document.cache_hit and not other_params.cache_hit


async def test_a_forced_or_own_threshold_query_stores_and_takes_only_what_any_query_would(
        cache: SemanticCache) -> None:
    router = two_tier_router(cache=cache)

    def ask(text: str, **routing: Any) -> Query:
        return Query(prompt=text, context=[PARIS], routing=RoutingControls(**routing))

    river = "easy: which river flows through Paris?"
    [forced_small] = await router.route([ask(river, force_tier="small")])
    assert forced_small.tier == "small" and cache.stats.stores == 0, "a forced small answer serves no one"
    [plain] = await router.route([ask(river)])
    cache._sizes.clear()  # read the partition's new count now, not after ``marker_memo_s``
    [hit] = await router.route([ask(river)])
    assert not plain.cache_hit and hit.cache_hit and hit.tier == "small"
    hits, misses = cache.stats.hits, cache.stats.misses
    [strict] = await router.route([ask(river, threshold=0.9999)])
    assert not strict.cache_hit and strict.tier == "large", "a small answer below the query's own threshold"
    assert (cache.stats.hits, cache.stats.misses) == (hits, misses + 1), "an answer found but refused is a miss"
    searches = await search_calls(cache)
    [forced] = await router.route([ask(river, force_tier="small")])
    assert not forced.cache_hit and forced.tier == "small", "a forced tier answers itself"
    assert (cache.stats.hits, cache.stats.misses) == (hits, misses + 1), "and is not looked up"
    assert await search_calls(cache) == searches
    [forced_large] = await router.route([ask("hard: which sea is near Paris?", force_tier="large")])
    cache._sizes.clear()
    [served] = await router.route([ask("hard: which sea is near Paris?", threshold=0.9999)])
    assert served.cache_hit and served.answer == forced_large.answer, "a last-tier answer serves any query"


async def test_a_forced_query_beside_others_is_not_looked_up_and_its_answer_is_stored_as_any(
        local_redis: LocalRedis, embedder: MiniLMEmbedder, request: pytest.FixtureRequest) -> None:
    """A query forcing the last tier, in a batch with another that hits: not embedded or searched, no miss;
    its answer is stored as any other's, here with the answer held in its partition, which is indexed with
    it (stored as a new entry alone, it would leave the held one unread: the partition has entries)."""
    cache = SemanticCache(local_redis.url, CacheConfig(index_name=f"test-{request.node.name[:40]}", ttl_s=60),
                          embedder)
    router = two_tier_router(cache=cache)
    river = Query(prompt="easy: which river flows through Paris?", context=[PARIS])
    capital = Query(prompt="easy: what is the capital of France?", context=[PARIS])
    sea = Query(prompt="hard: which sea is near Paris?", context=[PARIS], routing=RoutingControls(force_tier="large"))
    await router.route([river])  # the partition's first answer: held
    await router.route([capital])  # asked again: indexed, with the held one
    held_first = Query(prompt="easy: how long is the Seine?", context=[PARIS], tenant="third")
    await router.route([held_first])  # a partition of its own, its answer held
    cache._sizes.clear()
    searched = await search_calls(cache)
    misses = cache.stats.misses
    hit, forced = await router.route([river.model_copy(update={"id": "again"}),
                                      sea.model_copy(update={"tenant": "third"})])
    assert hit.cache_hit and not forced.cache_hit and forced.tier == "large"
    assert cache.stats.misses == misses, "the forced query is not looked up, so no miss"
    assert await search_calls(cache) == searched + 1
    cache._sizes.clear()
    again, served = await router.route([held_first.model_copy(update={"id": "held again"}),
                                        sea.model_copy(update={"id": "free", "tenant": "third",
                                                               "routing": RoutingControls()})])
    assert served.cache_hit and served.answer == forced.answer, "embedded when stored, it serves others"
    assert again.cache_hit, "the answer held in the forced query's partition was indexed with its answer"
    await cache.close()


async def test_an_answer_kept_only_by_a_plans_highest_tier_serves_no_one(cache: SemanticCache) -> None:
    """A plan that stops at the small tier keeps a confident small answer the policy escalates (here a
    policy that escalates every answer, as a tenant's strict live threshold would): stored, it would
    answer the same tenant's uncapped queries below their policy's bar. One the policy accepts is stored."""
    strict = ThresholdPolicy(name="strict", rules=(ThresholdRule(signal="n_words", op=">=", value=0),))
    router = Router([Tier("small", ScriptedEngine("small-model", small_script), strict),
                     Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy())], cache=cache)
    river = {"prompt": "easy: which river flows through Paris?", "context": [PARIS]}
    [capped] = await router.route([Query(routing=RoutingControls(max_tier="small"), **river)])  # type: ignore[arg-type]
    assert capped.tier == "small" and (capped.confidence or 0.0) >= cache.config.min_small_confidence
    assert "highest tier this query's plan allows" in capped.reason and cache.stats.stores == 0
    [free] = await router.route([Query(**river)])  # type: ignore[arg-type]
    assert not free.cache_hit and free.tier == "large", "the capped small answer was not stored"

    lenient = two_tier_router(cache=cache)
    sea = {"prompt": "easy: which sea is near Paris?", "context": [PARIS]}
    [accepted] = await lenient.route([Query(routing=RoutingControls(max_tier="small"), **sea)])  # type: ignore[arg-type]
    assert accepted.tier == "small" and "plan allows" not in accepted.reason and cache.stats.stores == 2
    cache._sizes.clear()
    [served] = await lenient.route([Query(**sea)])  # type: ignore[arg-type]
    assert served.cache_hit and served.tier == "small", "an answer the policy accepted serves the tenant's queries"


async def test_entries_expire(local_redis: LocalRedis, embedder: MiniLMEmbedder) -> None:
    cache = SemanticCache(local_redis.url, CacheConfig(index_name="test-ttl", ttl_s=3), embedder)
    router = two_tier_router(cache=cache)
    query = Query(prompt="hard: when does this expire?", context=[PARIS])
    await router.route([query])
    assert (await router.route([query]))[0].cache_hit
    await asyncio.sleep(4.5)
    assert not (await router.route([query]))[0].cache_hit
    await cache.close()


async def test_only_last_tier_or_confident_small_answers_are_stored(cache: SemanticCache) -> None:
    cache.config.min_small_confidence = 0.99
    router = two_tier_router(cache=cache)
    answers = await router.route([Query(prompt="easy: small answers this", context=[PARIS]),
                                  Query(prompt="hard: large answers this", context=[PARIS])])
    assert [a.tier for a in answers] == ["small", "large"] and answers[0].confidence < 0.99  # type: ignore[operator]
    assert cache.stats.stores == 1


async def test_feedback_records_round_trip(local_redis: LocalRedis) -> None:
    log = FeedbackLog(local_redis.url, FeedbackConfig(stream="test:feedback-roundtrip"))
    router = two_tier_router(feedback=log)
    answers = await router.route([Query(prompt=f"{'easy' if i % 2 else 'hard'} question {i}") for i in range(4)])
    await log.append([outcome_record(answers[0].request_id, "default", correct=True)])
    records = [r for _, r in await log.read_all()]
    decisions = [r for r in records if r["kind"] == "decision"]
    assert [d["request_id"] for d in decisions] == [a.request_id for a in answers]
    assert {d["decision"] for d in decisions} == {"accept", "escalate"}
    assert all(set(d) >= {"tenant", "signals", "tier", "model", "cost", "latency_ms", "cache_hit"} for d in decisions)
    assert records[-1] == outcome_record(answers[0].request_id, "default", correct=True)
    await log.close()


async def test_shadow_checks_log_agreement_as_implicit_labels(local_redis: LocalRedis) -> None:
    log = FeedbackLog(local_redis.url, FeedbackConfig(stream="test:feedback-shadow"))
    large = ScriptedEngine("large-model", large_script)
    router = Router([Tier("small", ScriptedEngine("small-model", small_script), PRESETS["v1"]),
                     Tier("large", large, AcceptAllPolicy())], feedback=log, shadow_fraction=1.0)
    answers = await router.route([Query(prompt=f"easy question {i}") for i in range(3)]
                                 + [Query(prompt="hard question")])
    await router.drain()
    outcomes = [r for _, r in await log.read_all() if r["kind"] == "outcome"]
    accepted = [a.request_id for a in answers if a.tier == "small"]
    assert sorted(o["request_id"] for o in outcomes) == sorted(accepted) and len(accepted) == 3
    assert all(o["source"] == "shadow" and o["score"] == 0.0 for o in outcomes), "Paris vs Lyon: no overlap"
    assert len(large.calls) == 2, "one escalation, then one batched shadow call off the request path"
    await log.close()


async def test_a_shadow_check_keeps_the_labels_of_the_answers_that_came_back(local_redis: LocalRedis) -> None:
    log = FeedbackLog(local_redis.url, FeedbackConfig(stream="test:feedback-shadow-partial"))
    large = ScriptedEngine("large-model", large_script, failing_marker="[fail]")
    router = Router([Tier("small", ScriptedEngine("small-model", small_script), PRESETS["v1"]),
                     Tier("large", large, AcceptAllPolicy())], feedback=log, shadow_fraction=1.0)
    answers = await router.route([Query(prompt=f"easy question {i}{' [fail]' if i == 1 else ''}") for i in range(3)])
    await router.drain()
    outcomes = [r for _, r in await log.read_all() if r["kind"] == "outcome"]
    assert sorted(o["request_id"] for o in outcomes) == sorted([answers[0].request_id, answers[2].request_id])
    assert len(large.calls) == 1, "one batched shadow call"
    await log.close()


async def synthetic_decisions(log: FeedbackLog, n: int, seed: int, labelled: bool = False) -> None:
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(size=n)
    records = [{"kind": "decision", "request_id": f"r{seed}-{i}", "tenant": "acme", "first_tier": "small",
                "tier": "small", "first_confidence": float(c), "cache_hit": False} for i, c in enumerate(confidence)]
    if labelled:
        records += [outcome_record(f"r{seed}-{i}", "acme", correct=bool(rng.uniform() < c), source="shadow")
                    for i, c in enumerate(confidence)]
    await log.append(records)


async def run_controller(controller: ThresholdController, steps: int) -> float:
    for _ in range(steps):
        await controller.step()
    value = redis.Redis.from_url(controller.redis_url).hget(controller.config.key, field_name("acme", "small"))
    assert value is not None
    return float(value)


def controlled_stream(url: str, name: str, target: ThresholdTarget,
                      min_samples: int) -> tuple[FeedbackLog, ThresholdController]:
    """A feedback stream of its own and a controller (max step 0.05) reading it."""
    stream, key = f"test:feedback-{name}", f"test:thresholds-{name}"
    config = ControllerConfig(target=target, stream=stream, key=key, max_step=0.05, min_samples=min_samples)
    return FeedbackLog(url, FeedbackConfig(stream=stream)), ThresholdController(url, config)


async def test_controller_converges_to_an_escalation_budget(local_redis: LocalRedis) -> None:
    log, controller = controlled_stream(local_redis.url, "budget", ThresholdTarget(kind="escalation_budget", value=0.3),
                                        min_samples=200)
    await synthetic_decisions(log, 2000, seed=1)
    first = await run_controller(controller, 1)
    assert first == pytest.approx(0.45), "one bounded step from the initial 0.5 towards the budget"
    for batch in range(2, 8):
        await synthetic_decisions(log, 300, seed=batch)
        threshold = await run_controller(controller, 1)
    assert threshold == pytest.approx(0.3, abs=0.03), "uniform confidences: a 30% budget means threshold 0.3"
    live = LiveThresholds(local_redis.url, key=controller.config.key)
    await live.refresh(force=True)
    assert live.for_tier(["acme", "other"], "small")[0] == pytest.approx(threshold)
    assert np.isnan(live.for_tier(["other"], "small")[0])
    await asyncio.gather(log.close(), controller.close(), live.close())


async def test_controller_converges_to_a_quality_target(local_redis: LocalRedis) -> None:
    log, controller = controlled_stream(local_redis.url, "quality", ThresholdTarget(kind="quality", value=0.8),
                                        min_samples=100)
    await synthetic_decisions(log, 2000, seed=11, labelled=True)
    threshold = await run_controller(controller, 6)
    # P(correct | c) = c on uniform c: precision above t is (1 + t) / 2, so 0.8 needs t = 0.6.
    assert threshold == pytest.approx(0.6, abs=0.05)
    await asyncio.gather(log.close(), controller.close())


async def test_controller_ignores_redelivered_records(local_redis: LocalRedis) -> None:
    config = ControllerConfig(target=ThresholdTarget(kind="escalation_budget", value=0.3), min_samples=1)
    controller = ThresholdController(local_redis.url, config)
    record = {"kind": "decision", "request_id": "x", "tenant": "t", "first_tier": "small", "tier": "small",
              "first_confidence": 0.4}
    controller.observe("1-0", record)
    controller.observe("1-0", record)
    assert list(controller.windows["t"].confidences.values()) == [0.4]
    controller.observe("2-0", {**record, "first_confidence": 0.5})  # the same request routed again (a chunk rerun)
    controller.observe("3-0", {**record, "request_id": "y"})
    assert controller.windows["t"].confidences == {"x": 0.5, "y": 0.4}, "a request routed twice counts once"
    await controller.close()


async def test_a_progressive_answer_is_one_decision_for_the_controller_and_its_label_is_of_the_final_answer(
        local_redis: LocalRedis) -> None:
    log, controller = controlled_stream(local_redis.url, "progressive", ThresholdTarget(kind="quality", value=0.8),
                                        min_samples=1)
    large = ScriptedEngine("large-model", large_script)
    router = Router([Tier("small", ScriptedEngine("small-model", small_script), PRESETS["v1"]),
                     Tier("large", large, AcceptAllPolicy())], feedback=log, shadow_fraction=1.0)
    [first] = await router.answer([Query(prompt="hard question", tenant="acme")], mode="progressive")
    assert first.answer is not None and first.answer.tier == "small" and first.rest is not None
    [final] = await router.answer([first.rest])  # its job resumes the route, as the consumer does
    assert final.answer is not None and final.answer.tier == "large"
    await router.drain()
    await log.append([outcome_record(final.answer.request_id, "acme", correct=True)])
    await controller.step()
    decisions = [r for _, r in await log.read_all() if r["kind"] == "decision"]
    assert [(d["tier"], d["decision"], d["provisional"], d["resumed"]) for d in decisions] == [
        ("small", "escalate", True, False), ("large", "escalate", False, True)]
    assert len(large.calls) == 1, "no shadow check of a provisional answer: its escalation is under way"
    window = controller.windows["acme"]
    assert list(window.confidences.values()) == [first.answer.confidence], "one first-tier confidence per route"
    assert not window.labelled, "the label is of the large model's answer, not of the small one's"
    [again] = await router.answer([first.rest])  # the task queue ran its job twice
    assert again.answer is not None
    await router.drain()
    await controller.step()
    assert len(window.confidences) == 1, "a route whose job ran twice counts once"
    [given_up] = await router.answer([Query(prompt="hard question", tenant="acme")], mode="progressive")
    assert given_up.answer is not None  # its job never ends: no final record
    await router.drain()
    await controller.step()
    assert list(window.confidences.values()) == [first.answer.confidence, given_up.answer.confidence], (
        "a route given up on counts too")
    await asyncio.gather(log.close(), controller.close())


async def test_a_label_finds_its_decision_however_late_whichever_comes_first_and_counts_once(
        local_redis: LocalRedis) -> None:
    """A quiet tenant's label after 10,000 of a busy tenant's decisions (the controller remembered the
    last 8,000 of all tenants), a label read before its decision (still buffered, or another replica's),
    and a request labelled twice (its latest label counts)."""
    config = ControllerConfig(target=ThresholdTarget(kind="quality", value=0.8), window=10, min_samples=1)
    controller = ThresholdController(local_redis.url, config)

    def decision(request_id: str, tenant: str, confidence: float) -> dict[str, object]:
        return {"kind": "decision", "request_id": request_id, "tenant": tenant, "first_tier": "small",
                "tier": "small", "first_confidence": confidence}

    controller.observe("1-0", decision("quiet-1", "quiet", 0.9))
    for i in range(10_000):
        controller.observe(f"2-{i}", decision(f"busy-{i}", "busy", 0.5))
    controller.observe("3-0", outcome_record("quiet-1", "quiet", correct=True))
    controller.observe("3-1", outcome_record("quiet-2", "quiet", correct=False))
    controller.observe("3-2", decision("quiet-2", "quiet", 0.7))
    controller.observe("3-3", outcome_record("quiet-1", "quiet", correct=False))
    assert controller.windows["quiet"].labelled == {"quiet-2": (0.7, 0.0), "quiet-1": (0.9, 0.0)}
    await controller.close()


async def test_a_restarted_controller_reads_what_it_was_given_and_never_acknowledged(local_redis: LocalRedis) -> None:
    """Entries delivered to the controller's consumer that it stopped before acknowledging are read by the
    next one (a read of new entries only would skip them for good)."""
    budget = ThresholdTarget(kind="escalation_budget", value=0.3)
    log, controller = controlled_stream(local_redis.url, "restart", budget, min_samples=1)
    await synthetic_decisions(log, 30, seed=21)
    await controller._ensure_group()
    client = redis.Redis.from_url(local_redis.url)
    delivered = client.xreadgroup(controller.config.group, controller.config.consumer,
                                  {controller.config.stream: ">"}, count=100)  # then it stopped
    assert len(delivered[0][1]) == 30
    await controller.close()
    _, restarted = controlled_stream(local_redis.url, "restart", budget, min_samples=1)
    await restarted.step()
    assert len(restarted.windows["acme"].confidences) == 30
    assert client.xpending(restarted.config.stream, restarted.config.group)["pending"] == 0
    await synthetic_decisions(log, 5, seed=22)
    await restarted.step()
    await restarted.step()
    assert len(restarted.windows["acme"].confidences) == 35
    client.xadd(restarted.config.stream, {"other": b"x"})  # not a feedback record: skipped, acknowledged
    client.xadd(restarted.config.stream, {"data": b"{not json"})
    await synthetic_decisions(log, 1, seed=23)
    await restarted.step()
    assert len(restarted.windows["acme"].confidences) == 36
    assert client.xpending(restarted.config.stream, restarted.config.group)["pending"] == 0
    await asyncio.gather(log.close(), restarted.close())


async def test_an_escalated_answer_labels_the_small_tier_below_its_threshold_by_agreement(
        local_redis: LocalRedis) -> None:
    """User labels and shadow checks only ever see accepted answers, so the quality controller could
    only tighten; an escalated answer's first answer is scored against the final one for free (here
    one agrees with the large tier, one does not), and labels the small tier at its own confidence."""
    log, controller = controlled_stream(local_redis.url, "agreement", ThresholdTarget(kind="quality", value=0.8),
                                        min_samples=1)

    def small(query: Query) -> ScriptedReply:
        if query.question.startswith("easy"):
            return small_script(query)
        return ScriptedReply("Lyon" if "agrees" in query.question else "maybe Paris or Nice", [-1.5] * 4)

    router = Router([Tier("small", ScriptedEngine("small-model", small), PRESETS["v1"]),
                     Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy())], feedback=log)
    answers = await router.route([Query(prompt="hard: it agrees", tenant="acme"),
                                  Query(prompt="hard: it does not", tenant="acme"),
                                  Query(prompt="easy: accepted", tenant="acme")])
    assert [a.tier for a in answers] == ["large", "large", "small"]
    await controller.step()
    decisions = {r["request_id"]: r for _, r in await log.read_all() if r["kind"] == "decision"}
    assert [decisions[a.request_id]["first_agreement"] for a in answers] == [1.0, 0.0, None]
    first = [a.attempts[0].confidence for a in answers]
    assert controller.windows["acme"].labelled == {answers[0].request_id: (first[0], 1.0),
                                                   answers[1].request_id: (first[1], 0.0)}
    await asyncio.gather(log.close(), controller.close())


async def test_routers_apply_live_thresholds_within_seconds(local_redis: LocalRedis) -> None:
    key = "test:thresholds-live"
    live = LiveThresholds(local_redis.url, key=key, refresh_s=0.2)
    router = two_tier_router(thresholds=live)
    easy = [Query(tenant=t, prompt="easy: what is it?") for t in ("strict", "relaxed")]
    assert [a.tier for a in await router.route(easy)] == ["small", "small"]
    # A field that is not a confidence (written by hand) is ignored; the others still apply.
    redis.Redis.from_url(local_redis.url).hset(key, mapping={field_name("strict", "small"): 0.999,
                                                             field_name("relaxed", "small"): "off",
                                                             field_name("other", "small"): 1.5})
    await asyncio.sleep(0.3)
    strict, relaxed = await router.route(easy)
    assert strict.tier == "large" and "live threshold 0.999" in strict.reason
    assert relaxed.tier == "small" and live.values == {field_name("strict", "small"): 0.999}
    await live.close()


async def test_redis_down_mid_run_loses_no_request_and_buffers_feedback(tmp_path: Path,
                                                                        embedder: MiniLMEmbedder) -> None:
    server = LocalRedis(port=free_port(), state_dir=tmp_path, data_dir=tmp_path / "data")
    server.start()
    breaker = RedisBreaker(BreakerConfig(cooldown_s=0.5))
    log = FeedbackLog(server.url, FeedbackConfig(stream="test:feedback-faults"), breaker=breaker)
    cache = SemanticCache(server.url, CacheConfig(index_name="test-faults"), embedder, breaker=breaker)
    router = two_tier_router(cache=cache, feedback=log)
    batches = [[Query(prompt=f"easy batch {b} question {i}") for i in range(3)] for b in range(3)]
    assert len(await router.route(batches[0])) == 3
    server.stop()
    answers = await router.route(batches[1])
    assert len(answers) == 3 and all(a.answer for a in answers), "no request fails while Redis is down"
    assert log.buffered == 3 and cache.stats.errors >= 1 and breaker.state == "open"
    server.start()
    await asyncio.sleep(0.6)  # the breaker's cool-down: then one call probes Redis and closes it
    again = await router.route(batches[0] + batches[2])
    assert log.buffered == 0
    assert all(a.cache_hit for a in again[:3]), "the cache is back (data kept in the data directory)"
    recorded = [r["request_id"] for _, r in await log.read_all()]
    assert recorded == [q.id for q in batches[0] + batches[1] + batches[0] + batches[2]]
    await router.close()
    server.stop()


async def test_a_question_the_embedder_cannot_read_is_a_miss_for_it_alone(cache: SemanticCache) -> None:
    """MiniLM's tokenizer raises on a lone surrogate; a query that got past the door with one (here built
    without validation) is served without the cache, and its batch-mates keep theirs."""
    router = two_tier_router(cache=cache)
    batch = [Query(prompt=f"hard: question {i} about France?", context=[PARIS]) for i in range(7)]
    batch.insert(2, Query(prompt="hard: x", context=[PARIS]).model_copy(update={"prompt": "hard \ud800 hi"}))
    first = await router.route(batch)  # a cold scope: nothing embedded before the store, which embeds
    assert len(first) == 8 and not any(a.cache_hit for a in first) and cache.stats.stores == 7
    again = await router.route([q.model_copy(update={"id": f"again-{i}"}) for i, q in enumerate(batch)])
    assert [a.cache_hit for a in again] == [i != 2 for i in range(8)]
    new = [q.model_copy(update={"id": f"new-{i}", "prompt": q.prompt.replace("France", "Peru")})
           for i, q in enumerate(batch)]
    trails = await router.begin(new)  # a warm scope, new questions: embedded, all but the unreadable one
    assert all(t.rejected is None and t.result is None for t in trails)
    assert [t.vector is None for t in trails] == [i == 2 for i in range(8)]


async def test_an_entry_the_cache_cannot_read_is_a_miss_for_its_query_alone(cache: SemanticCache) -> None:
    """An entry whose question is not UTF-8 (written by another release, or by hand) in one query's
    partition: that query misses, its batch-mate in another partition still hits."""
    router = two_tier_router(cache=cache)
    broken, fine = (Query(prompt="hard: what is the capital?", context=[text]) for text in (PARIS, "Rome is in Italy."))
    await router.route([broken, fine])
    [entry] = [key async for key in cache._client.scan_iter(f"{cache.index_name}:*", _type="HASH")
               if (await cache._client.hget(key, "partition")) == entry_tags(broken)["partition"].encode()]
    await cache._client.hset(entry, "question", b"\xff\xfe not text")
    cache._sizes.clear()
    errors = cache.stats.errors
    again = await router.route([q.model_copy(update={"id": f"again-{q.id}"}) for q in (broken, fine)])
    assert [a.cache_hit for a in again] == [False, True] and cache.stats.errors == errors + 1


async def test_a_record_that_cannot_be_stored_is_dropped_alone_and_counted(local_redis: LocalRedis,
                                                                          embedder: MiniLMEmbedder) -> None:
    cache = SemanticCache(local_redis.url, CacheConfig(index_name="test-poisoned-records", ttl_s=60), embedder)
    log = FeedbackLog(local_redis.url, FeedbackConfig(stream="test:feedback-poisoned"))
    router = two_tier_router(cache=cache, feedback=log)
    batch = [Query(prompt=f"hard: record {i}?", context=[PARIS]) for i in range(4)]
    overflowing = batch[1].params.model_copy(update={"seed": 2**70})  # what skipping validation let through
    batch[1] = batch[1].model_copy(update={"params": overflowing})
    answers = await router.route(batch)
    assert len(answers) == 4 and cache.stats.stores == 3, "the entry whose scope cannot be hashed alone is lost"
    decisions = [r["request_id"] for _, r in await log.read_all() if r["kind"] == "decision"]
    assert decisions == [q.id for q in batch], "the feedback records of its batch-mates (and its own) are stored"
    stored = await log.append([outcome_record("a", "t", score=0.5), {"kind": "outcome", "request_id": "b",
                                                                     "tenant": "t", "score": 2**70},
                               outcome_record("c", "t", correct=True)])
    assert stored and log.dropped == 1
    outcomes = [r["request_id"] for _, r in await log.read_all() if r["kind"] == "outcome"]
    assert outcomes == ["a", "c"]
    await router.close()


async def test_feedback_buffered_while_redis_is_down_costs_no_serialized_copy() -> None:
    """A record buffered while Redis is down (here: nothing listens on the port) is kept as it came, at
    about the size of the record itself: no copy in orjson's output buffer (4 KB and more per record)."""
    [answer] = await two_tier_router().route([Query(prompt="easy question")])
    breaker = RedisBreaker(BreakerConfig(cooldown_s=3600))
    log = FeedbackLog(f"redis://127.0.0.1:{free_port()}", FeedbackConfig(stream="test:sized"), breaker=breaker)
    await log.append([decision_record(answer)])  # refused: the circuit opens, the record is buffered
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            await log.append([decision_record(answer)])
        per_record = (tracemalloc.get_traced_memory()[0] - before) / 2000
    finally:
        tracemalloc.stop()
    assert log.buffered == 2001 and breaker.state == "open"
    assert per_record < 3000, f"{per_record:.0f} bytes held per buffered record"
    await log.close()


async def test_feedback_appends_failing_together_lose_no_record_and_write_each_once(tmp_path: Path) -> None:
    """Appends in flight together when Redis fails (nothing listens on the port yet) all keep their
    records; once Redis answers, each record reaches the stream exactly once, in the order appended."""
    server = LocalRedis(port=free_port(), state_dir=tmp_path)
    breaker = RedisBreaker(BreakerConfig(cooldown_s=0.2))
    log = FeedbackLog(server.url, FeedbackConfig(stream="test:together"), breaker=breaker)
    batches = [[outcome_record(f"batch-{b}-{i}", "t", correct=True) for i in range(3)] for b in range(4)]
    stored = await asyncio.gather(*(log.append(batch) for batch in batches))
    assert not any(stored) and breaker.attempts == 4 and log.buffered == 12 and log.dropped == 0
    server.start()
    try:
        await asyncio.sleep(0.3)  # the breaker's cool-down
        later = [outcome_record(f"later-{k}", "t", correct=True) for k in range(2)]
        stored = await asyncio.gather(log.append(later[:1]), log.append(later[1:]))
        assert stored == [True, False] and log.buffered == 1, "the second append waited behind the probe"
        assert await log.flush() and log.buffered == 0
        written = [record["request_id"] for _, record in await log.read_all()]
        assert written == [r["request_id"] for r in [*(r for b in batches for r in b), *later]]
    finally:
        await log.close()
        server.stop()


async def test_a_cancelled_feedback_write_puts_its_records_back() -> None:
    """A write cancelled while Redis does not answer (a socket that accepts and never replies) leaves
    every record it took in the buffer; closing the log with them unwritten counts them as dropped, as
    it does a record appended after."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        breaker = RedisBreaker(BreakerConfig(background_timeout_ms=300, cooldown_s=3600))
        log = FeedbackLog(f"redis://127.0.0.1:{silent.getsockname()[1]}", FeedbackConfig(stream="test:cancel"),
                          breaker=breaker)
        writing = asyncio.create_task(log.append([outcome_record(f"r{i}", "t", correct=True) for i in range(5)]))
        await asyncio.sleep(0.1)
        assert log.buffered == 0, "the write under way took the records"
        writing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writing
        assert log.buffered == 5 and log.dropped == 0
        await log.close()  # one more try: no answer within 300 ms, the records stay unwritten
        assert log.buffered == 0 and log.dropped == 5 and breaker.state == "open"
        assert not await log.append([outcome_record("late", "t", correct=True)]) and log.dropped == 6


@pytest.mark.parametrize("late", [False, True], ids=["under-way", "and-one-starting-as-it-ends"])
async def test_closing_the_feedback_log_waits_for_the_writes_under_way(tmp_path: Path, late: bool) -> None:
    """A write under way when the log closes (Redis frozen for 300 ms of a 2 s timeout) ends before the
    client disconnects; so does, with ``late``, one that the same task starts in the step the first ends
    (nothing awaited between: before the closing task resumes). Their records reach the stream, in
    order, and none is dropped."""
    server = LocalRedis(port=free_port(), state_dir=tmp_path)
    url, pid = server.start(), server.pid()
    assert pid is not None
    try:
        log = FeedbackLog(url, FeedbackConfig(stream="test:close"),
                          breaker=RedisBreaker(BreakerConfig(background_timeout_ms=2000)))
        assert await log.append([outcome_record("first", "t", correct=True)])

        async def writes() -> list[bool]:
            done = [await log.append([outcome_record(f"r{i}", "t", correct=True) for i in range(5)])]
            if late:
                done.append(await log.append([outcome_record("late", "t", correct=True)]))
            return done

        os.kill(pid, signal.SIGSTOP)
        try:
            writing = asyncio.create_task(writes())
            await asyncio.sleep(0.05)
            closing = asyncio.create_task(log.close())
            await asyncio.sleep(0.3)
            assert not closing.done(), "close waits for the write under way"
        finally:
            os.kill(pid, signal.SIGCONT)
        await closing
        assert await writing == ([True, True] if late else [True])
        assert log.dropped == 0 and log.buffered == 0
        stream = redis.Redis.from_url(url).xrange("test:close")
        written = [orjson.loads(fields[b"data"])["request_id"] for _, fields in stream]
        assert written == ["first", *(f"r{i}" for i in range(5)), *(["late"] if late else [])]
    finally:
        server.stop()


async def test_feedback_log_knows_which_tenant_owns_a_request_id(local_redis: LocalRedis) -> None:
    log = FeedbackLog(local_redis.url, FeedbackConfig(stream="test:feedback-owners"))
    router = two_tier_router(feedback=log)
    [answer] = await router.route([Query(tenant="acme", prompt="easy question")])
    assert await log.owner(answer.request_id) == "acme"
    assert await log.owner("no-such-request") is None
    await router.close()


async def test_redis_not_answering_opens_the_circuit_and_no_call_is_tried_during_the_cool_down(
        tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    """Redis stopped (SIGSTOP: connections open, no answers, the worst case): the first batch waits one
    timeout, then the cache, feedback and thresholds skip Redis without a call until the cool-down ends;
    nothing is lost and the buffered feedback reaches the stream when Redis answers again. The cool-down
    runs on a clock the test moves, so a slow machine cannot end it early."""
    import os
    import signal

    server = LocalRedis(port=free_port(), state_dir=tmp_path, data_dir=tmp_path / "data")
    server.start()
    now = [0.0]
    breaker = RedisBreaker(BreakerConfig(cooldown_s=2.0), clock=lambda: now[0])
    cache = SemanticCache(server.url, CacheConfig(index_name="test-breaker"), embedder, breaker=breaker)
    log = FeedbackLog(server.url, FeedbackConfig(stream="test:feedback-breaker"), breaker=breaker)
    live = LiveThresholds(server.url, breaker=breaker, refresh_s=0.0)
    router = two_tier_router(cache=cache, feedback=log, thresholds=live)
    await router.route([Query(prompt="easy warm-up")])  # connects within the default timeout
    breaker.config = BreakerConfig(timeout_ms=50, cooldown_s=2.0)
    pid = server.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        answers = await router.route([Query(prompt=f"easy while stopped {i}") for i in range(3)])
        assert len(answers) == 3 and breaker.state == "open" and breaker.failures == 1
        attempts = breaker.attempts
        for b in range(5):
            answers = await router.route([Query(prompt=f"easy batch {b} question {i}") for i in range(3)])
            assert len(answers) == 3 and all(a.answer for a in answers)
        assert breaker.attempts == attempts, "no Redis call is attempted during the cool-down"
        assert breaker.skipped >= 5 and log.buffered == 18
    finally:
        os.kill(pid, signal.SIGCONT)
    now[0] += 1.9
    await router.route([Query(prompt="easy before the cool-down ends")])
    assert breaker.attempts == attempts and breaker.state == "open"
    now[0] += 0.2
    await router.route([Query(prompt="easy after the outage")])
    assert breaker.state == "closed" and log.buffered == 0
    assert len([r for _, r in await log.read_all() if r["kind"] == "decision"]) == 1 + 3 + 15 + 1 + 1
    await router.close()
    server.stop()


class CountingEmbedder(MiniLMEmbedder):
    """The real embedder, counting the questions it is given."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += texts
        return self.inner.embed(texts)


async def test_a_partition_asked_once_holds_its_answer_unembedded_until_asked_again(local_redis: LocalRedis,
                                                                                   embedder: MiniLMEmbedder) -> None:
    """A partition never asked costs no embedding, on the request path or after: its first answer is
    held by its question. The same question then hits; a paraphrase misses, and its store indexes
    the held answer with its own, so that paraphrases of either hit from then on."""
    counting = CountingEmbedder(embedder)
    config = CacheConfig(index_name="test-cold", ttl_s=60, marker_memo_s=0.0)
    cache = SemanticCache(local_redis.url, config, counting)
    router = two_tier_router(cache=cache)
    question = {"prompt": "hard: what is the capital of France?", "context": [PARIS]}
    trails = await router.begin([Query(tenant="a", **question)])  # type: ignore[arg-type]
    assert counting.texts == [] and np.isnan(trails[0].vector).all(), "a cold scope: no embedding on the request path"
    assert trails[0].cache_tags == entry_tags(trails[0].query), "the lookup's tags travel to the store"
    assert trails[0].cache_storing == "hold"
    [first] = await router.route([Query(tenant="a", **question)])  # type: ignore[arg-type]
    assert not first.cache_hit and counting.texts == [], "held: not embedded, not indexed"
    [forced] = await router.route([Query(tenant="a", routing=RoutingControls(force_tier="small"), **question)])  # type: ignore[arg-type]
    [again] = await router.route([Query(tenant="a", **question)])  # type: ignore[arg-type]
    assert not forced.cache_hit, "a query that forces a tier takes no held answer either"
    assert again.cache_hit and again.answer == first.answer and counting.texts == [], "the same question hits"
    assert "held" in again.reason
    reworded = "hard: what's the capital of France"
    [paraphrase] = await router.route([Query(tenant="a", prompt=reworded, context=[PARIS])])
    assert not paraphrase.cache_hit and sorted(counting.texts) == sorted([reworded, question["prompt"]]), (
        "the paraphrase's store embedded it and the held question, to index both")
    held = cache.held_key(entry_tags(Query(tenant="a", **question)))  # type: ignore[arg-type]
    assert not await cache._client.exists(held), "the held answers are indexed now, not held"
    [near, other_tenant] = await router.route([Query(tenant="a", prompt="hard: what is the capital of France ?",
                                                     context=[PARIS]), Query(tenant="b", **question)])  # type: ignore[arg-type]
    assert near.cache_hit and near.answer == first.answer, "the formerly held answer is found by its vector"
    assert not other_tenant.cache_hit
    second = SemanticCache(local_redis.url, config, counting)  # another replica finds the markers in Redis
    [from_redis] = await two_tier_router(cache=second).route([Query(tenant="b", **question)])  # type: ignore[arg-type]
    assert from_redis.cache_hit, "tenant b's held answer, by its question"
    await cache.close()
    await second.close()


async def test_a_server_that_cannot_hold_answers_gets_a_new_partitions_first_answer_indexed(
        local_redis: LocalRedis, embedder: MiniLMEmbedder) -> None:
    """This Redis says it holds answers (7 or later). Where the server says it is older, the first
    answer of a new partition, which its lookup (no search, so no INFO read yet) marked to hold, is
    indexed by the store, so that a paraphrase of it hits."""
    config = CacheConfig(index_name="test-unheld", ttl_s=60, marker_memo_s=0.0)
    this = SemanticCache(local_redis.url, config, embedder)
    version = (await this._server_info())["redis_version"]
    assert isinstance(version, str) and holds_answers(await this._server_info()), version
    await this.close()
    cache = SemanticCache(local_redis.url, config, embedder)

    async def redis_6() -> dict[str, Any]:
        return {**await SemanticCache._server_info(cache), "redis_version": "6.2.14"}

    cache._server_info = redis_6  # type: ignore[method-assign]
    router = two_tier_router(cache=cache)
    trails = await router.begin([Query(tenant="a", prompt="hard: what is the capital of France?", context=[PARIS])])
    assert trails[0].cache_storing == "hold", "the lookup did not know yet"
    [first] = await router.route([Query(tenant="a", prompt="hard: what is the capital of France?", context=[PARIS])])
    assert not cache._holding, "the store read INFO before deciding"
    [paraphrase] = await router.route([Query(tenant="a", prompt="hard: what's the capital of France", context=[PARIS])])
    assert not first.cache_hit and paraphrase.cache_hit and paraphrase.answer == first.answer
    held = cache.held_key(entry_tags(Query(tenant="a", prompt="x", context=[PARIS])))
    assert not await cache._client.exists(held), "nothing held"
    await cache.close()


async def test_one_store_holds_indexes_and_takes_held_answers_and_remembers_each_partitions_count(
        local_redis: LocalRedis, embedder: MiniLMEmbedder) -> None:
    """One store call with every way of storing: an answer held (its partition never asked), one
    indexed in a partition with entries, one indexed with the answers held in its partition (one of
    them not a question: dropped, counted, and the rest still indexed), and two of one partition, one
    to hold and one to index, which are both indexed (nothing left held that no lookup would read).
    The markers and this replica's memo of them agree."""
    cache = SemanticCache(local_redis.url, CacheConfig(index_name="test-ways", ttl_s=60, marker_memo_s=60.0),
                          embedder)
    queries = [Query(tenant=t, prompt=f"hard: what is the capital of country {n}?", context=[PARIS])
               for t, n in [("new", 1), ("warm", 2), ("asked", 3), ("mixed", 4), ("mixed", 5)]]
    answers = await two_tier_router().route(queries)
    tags = cache.tags_of(queries)
    client = cache._client
    await client.set(cache.marker_key(tags[1]), 5)
    await client.set(cache.marker_key(tags[2]), 0)
    await client.hset(cache.held_key(tags[2]), mapping={b"hard: what is the capital of country 0?": answers[0]
                                                        .model_dump_json(), b"\xff not text": b"{}"})
    errors = cache.stats.errors
    stored = await cache.store(queries, answers, np.full((5, cache.dimensions), np.nan, np.float32), "large", tags,
                               ["hold", "index", "index_held", "hold", "index_held"])
    assert stored == 5 and cache.stats.errors == errors + 1, "the five answers; the unreadable held field counted"
    assert await client.hkeys(cache.held_key(tags[0])) == [queries[0].question.encode()]
    assert not await client.exists(cache.held_key(tags[2]), cache.held_key(tags[3])), "taken, or never held"
    counts = [await client.get(cache.marker_key(t)) for t in tags[:4]]  # type: ignore[index]
    assert counts == [b"0", b"6", b"2", b"2"], "held: 0; indexed: each entry, the taken one too"
    assert [cache._sizes[cache.marker_key(t)][0] for t in tags[:4]] == [0, 6, 2, 2]  # type: ignore[index]
    cache._sizes.clear()
    hits = (await cache.lookup([q.model_copy(update={"id": f"again-{n}"}) for n, q in enumerate(queries)]
                               + [Query(tenant="asked", prompt="hard: what is the capital of country 0?",
                                        context=[PARIS])]))
    assert hits is not None and all(h is not None for h in hits.hits), "every answer found again, the taken one too"
    await cache.close()


async def test_forgetting_a_tenant_removes_its_answers_in_every_index_of_the_cache_and_no_one_elses(
        local_redis: LocalRedis, embedder: MiniLMEmbedder) -> None:
    """``purge``: a tenant's indexed entries, in this embedder's index and in another embedder's of the same
    configuration, its held answers and its partitions' markers go; another tenant's stay and still hit.
    The forgotten tenant's partitions are new again: its next answer is held. Without Redis, it raises a
    breaker's fault (the endpoint's 503), not the request path's breaker's."""
    config = CacheConfig(index_name="test-forget", ttl_s=60)
    cache, static = SemanticCache(local_redis.url, config, embedder), SemanticCache(local_redis.url, config)
    router, static_router = two_tier_router(cache=cache), two_tier_router(cache=static)

    def ask(tenant: str, question: str, context: str = PARIS) -> Query:
        return Query(tenant=tenant, prompt=f"hard: {question}", context=[context])

    pair = ["what is the capital of France?", "which river flows through Paris?"]
    for tenant in ("a", "b"):
        await router.route([ask(tenant, q) for q in pair])  # one partition asked twice at once: indexed
    await static_router.route([ask("a", q) for q in pair])
    await router.route([ask("a", "what is the capital?", "The capital of Italy is Rome.")])  # held
    tag = tag_value("a")
    assert await cache._client.keys(f"test-forget-*:held:{tag}:*"), "the held answer is there to forget"
    assert await cache.purge("a") == 5, "two entries in each index and one held answer"
    assert await cache._client.keys(f"test-forget-*:{tag}:*") == [], "no held answer or marker left"
    assert await cache.purge("a") == 0 and await cache.purge("nobody") == 0
    [trail] = await router.begin([ask("a", "which sea is near Paris?")])
    assert trail.cache_storing == "hold", "tenant a's partition is new again, in this replica's memo too"
    gone = await router.route([ask("a", q) for q in pair] + [ask("a", "what is the capital?",
                                                                 "The capital of Italy is Rome.")])
    kept = await router.route([ask("b", q) for q in pair])
    assert not any(a.cache_hit for a in gone) and all(a.cache_hit for a in kept)
    down = SemanticCache(f"redis://127.0.0.1:{free_port()}/0", config, embedder)
    with pytest.raises(RedisFaultError):
        await down.purge("b")
    assert down.breaker.state == "closed", "a purge's fault leaves the circuit of every tenant's requests closed"
    for one in (cache, static, down):
        await one.close()


async def test_an_answer_held_after_its_partition_got_entries_is_indexed_and_a_bad_question_misses_alone(
        local_redis: LocalRedis, embedder: MiniLMEmbedder) -> None:
    """A lookup saw a partition never asked, but before its answer was stored another replica indexed
    entries there: the answer is indexed, not left in a hash no lookup reads. And a question that cannot
    be a held answer's field (a lone surrogate, built here without the door's validation) misses alone."""
    cache = SemanticCache(local_redis.url, CacheConfig(index_name="test-late", ttl_s=60), embedder)
    late, other = (Query(tenant=t, prompt="hard: what is the capital of France?", context=[PARIS]) for t in "ab")
    [answer] = await two_tier_router().route([late])
    [tags] = cache.tags_of([late])
    assert tags is not None
    await cache._client.set(cache.marker_key(tags), 3)  # another replica's entries, after this one's lookup
    assert await cache.store([late], [answer], np.full((1, cache.dimensions), np.nan, np.float32), "large",
                             [tags], ["hold"]) == 1
    assert not await cache._client.exists(cache.held_key(tags))
    assert await cache._client.get(cache.marker_key(tags)) == b"4", "indexed: counted with the other replica's"
    await two_tier_router(cache=cache).route([other])  # tenant b's answer held
    cache._sizes.clear()
    bad = other.model_copy(update={"id": "bad", "prompt": "hard \ud800"})
    lookup = await cache.lookup([late.model_copy(update={"id": "again"}), bad, other.model_copy(update={"id": "b2"})])
    assert lookup is not None and [h is not None for h in lookup.hits] == [True, False, True]
    await cache.close()


async def test_partitions_count_their_entries_and_a_large_one_is_searched_in_batches(
        local_redis: LocalRedis, embedder: MiniLMEmbedder) -> None:
    """Stores count entries per partition and for the index; a partition that is most of the index is
    searched through the HNSW graph (``BATCHES``) and its paraphrases still hit; a small one is not."""
    config = CacheConfig(index_name="test-sizes", ttl_s=60, marker_memo_s=0.0, batches_min_entries=3,
                         batches_min_share=0.5, hnsw_m=12, hnsw_ef_construction=48, hold_new_partitions=False)
    cache = SemanticCache(local_redis.url, config, embedder)
    router = two_tier_router(cache=cache)
    asked = [f"hard: what is the capital of country number {n}?" for n in range(4)]
    await router.route([Query(tenant="a", prompt=q, context=[PARIS]) for q in asked])
    client = redis.Redis.from_url(local_redis.url, decode_responses=True)
    attributes = {a[1]: a for a in client.ft(cache.index_name).info()["attributes"]}
    assert sorted(attributes) == ["embedding", "partition", "tenant"], "only what a lookup filters on is indexed"
    graph = dict(zip(attributes["embedding"][::2], attributes["embedding"][1::2], strict=False))
    assert int(graph["M"]) == 12 and int(graph["ef_construction"]) == 48, graph
    await router.route([Query(tenant="b", prompt=asked[0], context=[PARIS])])
    big, small = (Query(tenant=t, prompt="hard: what's the capital of country number 2", context=[PARIS])
                  for t in ("a", "b"))
    sizes, index_size = await cache.partition_sizes(cache.tags_of([big, small]))
    assert sizes == [4, 1] and index_size == 5
    assert [hybrid_policy(n, index_size, config) for n in sizes] == ["BATCHES", None]
    [hit, miss] = await router.route([big, small])
    assert hit.cache_hit, "found through the graph"
    assert not miss.cache_hit, "tenant b's partition holds another question only"
    await cache.close()


def test_the_hybrid_policy_follows_the_partitions_share_of_the_index() -> None:
    config = CacheConfig(batches_min_entries=2000, batches_min_share=0.25)
    assert hybrid_policy(30_000, 30_000, config) == "BATCHES"
    assert hybrid_policy(10_000, 30_000, config) == "BATCHES"
    assert hybrid_policy(1_000, 30_000, config) is None, "a small partition: brute force over its entries"
    assert hybrid_policy(5_000, 100_000, config) is None, "a small share: batches would walk most of the graph"
    assert hybrid_policy(0, 0, config) is None


async def test_the_prerouter_and_the_cache_share_one_embedding_per_request(local_redis: LocalRedis,
                                                                          embedder: MiniLMEmbedder) -> None:
    """With the pre-router fitted on the cache's embedder, a request is embedded once: the
    pre-router's vector serves the lookup and the store."""
    from cascade.prerouter import PreRouter, PreRouterFile

    counting = CountingEmbedder(embedder)
    cache = SemanticCache(local_redis.url, CacheConfig(index_name="test-shared", ttl_s=60, marker_memo_s=0.0),
                          counting)
    rng = np.random.default_rng(0)
    file = PreRouterFile(models=("s", "l"), tiers=np.array([0, 1]), weights=rng.normal(size=(2, 384, 2)),
                         biases=np.zeros((2, 2)), cost_coef=np.zeros((385, 2)), cost_intercept=np.zeros(2),
                         default_length=0.5, lam=0.0)
    router = two_tier_router(cache=cache)
    router.prerouter = PreRouter(file, counting)
    question = {"prompt": "hard: what is the capital of France?", "context": [PARIS]}
    await router.route([Query(**question)])  # type: ignore[arg-type]
    [again] = await router.route([Query(**question)])  # type: ignore[arg-type]
    assert again.cache_hit, "the lookup used the pre-router's vector"
    assert counting.texts == [question["prompt"]] * 2, "one embedding per request, none by the cache"
    await cache.close()


async def test_concurrent_lookups_share_one_run_and_keep_their_tenants_and_rows(local_redis: LocalRedis,
                                                                               embedder: MiniLMEmbedder) -> None:
    """Batches that come while a lookup is under way are looked up together (one embedder call, one
    round trip) and each gets back its own rows: a tenant's hit, another's miss, an unreadable question's
    miss, a known vector used as given."""
    counting = CountingEmbedder(embedder)
    cache = SemanticCache(local_redis.url, CacheConfig(index_name="test-together", ttl_s=60, hold_new_partitions=False),
                          counting)
    router = two_tier_router(cache=cache)
    asked = "hard: which river flows through Paris?"
    [first] = await router.route([Query(tenant="a", prompt=asked, context=[PARIS])])
    await router.route([Query(tenant="b", prompt="hard: how tall is Mount Everest?", context=[PARIS])])
    cache._sizes.clear()  # read the partitions' new counts now, not after ``marker_memo_s``
    unreadable = Query(tenant="b", prompt="hard: x", context=[PARIS]).model_copy(update={"prompt": "hard \ud800"})
    batches = [[Query(tenant="c", prompt="hard: what is the capital of France?", context=[PARIS])],
               [Query(tenant="b", prompt=asked, context=[PARIS]), unreadable],
               [Query(tenant="a", prompt="hard: which river flows through Paris ?", context=[PARIS])]]
    known = np.full((1, cache.dimensions), np.nan, np.float32)
    known[0] = embedder.embed([batches[2][0].question])[0]
    runs, embedded = cache._lookups.runs, len(counting.texts)
    lookups = await asyncio.gather(cache.lookup(batches[0]), cache.lookup(batches[1]), cache.lookup(batches[2], known))
    assert cache._lookups.runs == runs + 2, "the first lookup ran alone, the two that came meanwhile together"
    assert counting.texts[embedded:] == [asked, "hard \ud800", asked, "hard \ud800"], (
        "a cold scope's question is not embedded; the second run embedded the questions of both its batches "
        "in one call (which failed, so then one by one); the known vector was used as given")
    first_lookup, second, third = [lookup for lookup in lookups if lookup is not None]
    assert first_lookup.hits == [None] and second.hits == [None, None], "tenant b never sees tenant a's entry"
    assert third.hits[0] is not None and third.hits[0].answer == first.answer
    assert second.unreadable == frozenset({1}) and second.vector(1) is None and second.vector(0) is not None
    assert np.array_equal(third.vectors, known) and len(second.tags) == 2 and second.tags[0] is not None
    await cache.close()


async def test_a_full_feedback_buffer_drops_decisions_before_the_labels_it_accepted() -> None:
    """While Redis is down (nothing listens on the port), a full buffer makes room by dropping its oldest
    decision record, never a label its sender was told was accepted; with nothing but labels held, a new
    decision is dropped, and the log says it is full of labels (the feedback endpoint answers 503)."""
    [answer] = await two_tier_router().route([Query(prompt="easy question")])
    breaker = RedisBreaker(BreakerConfig(cooldown_s=3600))
    log = FeedbackLog(f"redis://127.0.0.1:{free_port()}", FeedbackConfig(stream="test:full", buffer_size=4),
                      breaker=breaker)
    label = outcome_record("r-0", "t", correct=True)
    await log.append([label, decision_record(answer), decision_record(answer)])
    await log.append([decision_record(answer), outcome_record("r-1", "t", correct=False),
                      outcome_record("r-2", "t", correct=True)])
    held = [record for _, record in log._buffer]
    assert [r.get("request_id") for r in held if r["kind"] == "outcome"] == ["r-0", "r-1", "r-2"]
    assert len(held) == 4 and log.dropped == 2 and not log.full_of_labels
    await log.append([outcome_record("r-3", "t", correct=True)])
    assert log.full_of_labels and log.dropped == 3
    await log.append([decision_record(answer)])
    assert [r["request_id"] for _, r in log._buffer] == ["r-0", "r-1", "r-2", "r-3"] and log.dropped == 4
    await log.append([outcome_record("r-4", "t", correct=True, source="shadow")])  # a shadow check's label
    assert [r["request_id"] for _, r in log._buffer] == ["r-0", "r-1", "r-2", "r-3"] and log.dropped == 5
    await log.close()


async def test_labels_in_a_write_under_way_count_as_held() -> None:
    """A write that Redis does not answer (a socket that accepts and never replies) holds its labels out
    of the buffer; they are put back if it fails, so they count towards a buffer full of labels."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        breaker = RedisBreaker(BreakerConfig(background_timeout_ms=300, cooldown_s=3600))
        log = FeedbackLog(f"redis://127.0.0.1:{silent.getsockname()[1]}",
                          FeedbackConfig(stream="test:writing", buffer_size=2), breaker=breaker)
        writing = asyncio.create_task(log.append([outcome_record(f"w-{i}", "t", correct=True) for i in range(2)]))
        await asyncio.sleep(0.1)
        assert log.buffered == 0 and log.full_of_labels, "taken by the write under way, still held"
        assert not await writing
        assert log.buffered == 2 and log.full_of_labels and log.dropped == 0
        await log.close()
