"""An ingress built without Ray, through Redis faults. The feedback endpoint's owner check while Redis
refuses every connection: signed request ids are checked by the id alone and their labels are
buffered, where an unsigned id's check needs its owner key in Redis and answers 503. A progressive
stream waits through an outage for its final answer."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cascade.local_redis import LocalRedis
from cascade.schemas import RoutedAnswer
from services.batch.store import BatchStore, new_id
from services.batch.threads import StoreCalls
from services.ingress import RouterIngress
from services.openai_api import DONE, ApiError, FeedbackRequest, routing_object
from services.request_ids import RequestIds
from tests.conftest import free_port

SECRET = "the test's request-id secret"


class Unserved(RouterIngress):
    """The ingress outside Serve: Serve awaits its ``__del__``; collected here, it is not called."""

    def __del__(self) -> None:
        pass


@pytest.fixture(autouse=True)
def collector_as_it_was() -> Iterator[None]:
    """The ingress freezes the heap and raises the young-generation threshold of its process (this one)."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


async def ingress(secret: str | None, owner_keys: bool | None = None, redis_url: str | None = None,
                  queue: dict[str, Any] | None = None) -> Any:
    """An ingress whose Redis is ``redis_url``, by default a port nothing listens on; its task queue is
    on with ``queue`` (its settings) and its tiers are never called."""
    tier = {"placement": "ingress", "engine": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}}
    settings = {"tiers": [{"name": "small", **tier}, {"name": "large", "policy": "accept", **tier}],
                "redis_url": redis_url or f"redis://127.0.0.1:{free_port()}/0", "cache": {"enabled": False},
                "queue": {"enabled": False} if queue is None else queue, "feedback": {"owner_keys": owner_keys},
                "redis_breaker": {"cooldown_s": 0.2},
                "server": {"use_redis": True, "request_id_secret": secret,
                           "tenants": {"a": {"api_keys": ["key-a"]}, "b": {"api_keys": ["key-b"]}}}}
    made = Unserved.__new__(Unserved)
    await RouterIngress.__init__(made, settings, {})
    return made


async def test_a_signed_ids_label_is_taken_while_redis_is_down() -> None:
    made = await ingress(SECRET)
    request_id = RequestIds(SECRET.encode(), 3600).new("a")
    assert made.router.feedback.config.owner_keys is False, "signed ids: the log stores no owners"
    taken = await made.feedback(FeedbackRequest(request_id=request_id, correct=True), "Bearer key-a")
    assert taken["accepted"] and taken["buffered"] and made.router.feedback.buffered == 1
    with pytest.raises(ApiError) as refused:
        await made.feedback(FeedbackRequest(request_id=request_id, correct=False), "Bearer key-b")
    assert refused.value.status == 404 and made.router.feedback.buffered == 1
    with pytest.raises(ApiError) as unavailable:  # an id made before the secret: its stored owner decides
        await made.feedback(FeedbackRequest(request_id="0" * 32, correct=True), "Bearer key-a")
    assert unavailable.value.status == 503 and made.router.feedback.buffered == 1
    await RouterIngress.__del__(made)


async def test_a_label_that_would_drop_an_accepted_one_is_503_while_redis_is_down() -> None:
    made = await ingress(SECRET)
    log_ = made.router.feedback
    log_.config = log_.config.model_copy(update={"buffer_size": 2})
    ids = RequestIds(SECRET.encode(), 3600)
    for _ in range(2):
        taken = await made.feedback(FeedbackRequest(request_id=ids.new("a"), correct=True), "Bearer key-a")
        assert taken["accepted"] and taken["buffered"]
    with pytest.raises(ApiError) as full:
        await made.feedback(FeedbackRequest(request_id=ids.new("a"), correct=True), "Bearer key-a")
    assert full.value.status == 503 and full.value.headers == {"Retry-After": "30"}
    assert log_.buffered == 2 and log_.dropped == 0
    await RouterIngress.__del__(made)


async def test_an_unsigned_ids_label_needs_redis_for_its_owner() -> None:
    made = await ingress(None)
    with pytest.raises(ApiError) as unavailable:
        await made.feedback(FeedbackRequest(request_id="r" * 32, correct=True), "Bearer key-a")
    assert unavailable.value.status == 503 and made.router.feedback.buffered == 0
    await RouterIngress.__del__(made)


async def test_while_owners_are_still_stored_a_signed_id_not_signed_for_the_caller_is_looked_up() -> None:
    """``feedback.owner_keys: true`` beside a secret (switching over, or rotating the secret): an id signed
    under another secret may have a stored owner, so it is looked up, which needs Redis."""
    made = await ingress(SECRET, owner_keys=True)
    assert made.router.feedback.config.owner_keys is True
    old_secret = RequestIds(b"the secret before this one", 3600).new("a")
    with pytest.raises(ApiError) as unavailable:
        await made.feedback(FeedbackRequest(request_id=old_secret, correct=True), "Bearer key-a")
    assert unavailable.value.status == 503
    await RouterIngress.__del__(made)


def provisional_answer(request_id: str) -> RoutedAnswer:
    return RoutedAnswer(request_id=request_id, tenant="a", answer="Paris", tier="small", model="m", confidence=0.2,
                        signals=None, reason="escalated", cost=0.0, finish_reason="stop", prompt_tokens=3,
                        completion_tokens=1, attempts=[], latency=[])


async def test_a_progressive_stream_waits_through_a_redis_outage_for_its_final_answer(tmp_path: Path) -> None:
    """Redis goes away while the stream polls for the job (the consumer could not finish it either):
    the stream polls on, and ends with the final answer once Redis is back and the job is done."""
    server = LocalRedis(port=free_port(), state_dir=tmp_path)
    url = server.start()
    made = await ingress(None, redis_url=url, queue={"stream_wait_s": 60})
    try:
        assert made.batches.calls.breaker is not made.breaker, "a slow upload never turns the cache off"
        job_id = new_id("job")
        BatchStore(url).save_job({"id": job_id, "tenant": "a", "status": "running"})
        answer = provisional_answer("r1")
        events: list[bytes] = []

        async def read() -> None:
            async for event in made._progressive_stream(answer, routing_object(answer), job_id):
                events.append(event)

        reading = asyncio.create_task(read())
        await asyncio.sleep(0.6)
        server.stop()
        await asyncio.sleep(1.5)
        assert not reading.done(), reading
        assert made.batches.calls.breaker.failures >= 1, "the polls met the outage"
        final_answer = {"object": "chat.completion", "id": "final"}
        assert BatchStore(server.start()).complete_job(job_id, {"response": final_answer})
        await asyncio.wait_for(reading, timeout=10)
        assert events[-1] == DONE
        final = orjson.loads(events[-2].removeprefix(b"data: "))
        assert final == {"object": "cascade.job", "id": job_id, "status": "completed", "response": final_answer}
    finally:
        server.stop()
        await RouterIngress.__del__(made)


async def test_a_progressive_stream_that_outwaits_its_job_says_it_is_still_running(tmp_path: Path) -> None:
    server = LocalRedis(port=free_port(), state_dir=tmp_path)
    made = await ingress(None, redis_url=server.start(), queue={"stream_wait_s": 0.5})
    try:
        answer = provisional_answer("r2")
        events = [e async for e in made._progressive_stream(answer, routing_object(answer), "job-" + "0" * 24)]
        assert events[-1] == DONE
        assert orjson.loads(events[-2].removeprefix(b"data: ")) == {
            "object": "cascade.job", "id": "job-" + "0" * 24, "status": "running", "response": None}
    finally:
        server.stop()
        await RouterIngress.__del__(made)


async def test_a_progressive_stream_whose_polls_find_the_store_busy_ends_saying_its_job_is_running(
        tmp_path: Path) -> None:
    server = LocalRedis(port=free_port(), state_dir=tmp_path)
    made = await ingress(None, redis_url=server.start(), queue={"stream_wait_s": 1.5})
    release = threading.Event()
    try:
        made.batches.calls = StoreCalls(made.batches.calls.breaker, threads=1)
        held = asyncio.create_task(made.batches.calls.run(lambda: release.wait(10), timeout_s=10))
        answer = provisional_answer("r3")
        events = [e async for e in made._progressive_stream(answer, routing_object(answer), "job-" + "1" * 24)]
        assert orjson.loads(events[-2].removeprefix(b"data: "))["status"] == "running" and events[-1] == DONE
        release.set()
        assert await held is True
    finally:
        release.set()
        server.stop()
        await RouterIngress.__del__(made)
