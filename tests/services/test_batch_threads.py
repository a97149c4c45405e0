"""The Batch API's store calls (``StoreCalls``), without Redis: a call's timeout starts once a thread
is free for it; waiting longer than that for one is a 503 (busy) that the breaker does not count; a
thread is given back when its call ends, not when its caller stops waiting."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cascade.breaker import BreakerConfig, RedisBreaker, RedisFaultError
from services.batch.threads import StoreCalls
from services.openai_api import ApiError


async def test_a_call_waits_for_a_thread_outside_its_timeout_and_a_full_pool_is_busy_not_a_fault() -> None:
    calls = StoreCalls(RedisBreaker(BreakerConfig(cooldown_s=60)), threads=1)
    release = threading.Event()
    held = asyncio.create_task(calls.run(lambda: release.wait(10), timeout_s=5))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    with pytest.raises(ApiError) as busy:
        await calls.run(lambda: "never run", timeout_s=0.2)
    assert busy.value.status == 503 and "busy" in busy.value.message and busy.value.headers == {"Retry-After": "1"}
    assert 0.15 < time.monotonic() - began < 3.0, "busy after its own timeout, not the held call's"
    assert calls.breaker.failures == 0 and calls.breaker.state == "closed"

    def slow_name() -> str:
        time.sleep(1.0)
        return threading.current_thread().name

    began = time.monotonic()
    waiting = asyncio.create_task(calls.run(slow_name, timeout_s=1.5))
    await asyncio.sleep(1.0)
    release.set()
    assert await held is True
    assert (await waiting).startswith("cascade-batch-store"), "1 s waiting for the thread, then 1 s on it"
    assert time.monotonic() - began > 1.9


async def test_a_thread_whose_caller_timed_out_is_given_back_when_its_call_ends() -> None:
    calls = StoreCalls(RedisBreaker(BreakerConfig(cooldown_s=0.0)), threads=1)
    release = threading.Event()
    with pytest.raises(RedisFaultError, match="no answer within 100 ms"):
        await calls.run(lambda: release.wait(10), timeout_s=0.1)
    with pytest.raises(ApiError, match="busy"):
        await calls.run(lambda: "never run", timeout_s=0.1)
    release.set()
    assert await calls.run(lambda: "ran", timeout_s=1.0) == "ran"
