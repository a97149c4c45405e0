"""The per-tenant rate limit against a real Redis, without Ray: concurrent checks counted together,
every request in its own place of its tenant's count, and requests let through while Redis is down."""

from __future__ import annotations

import asyncio
import time

import redis

from cascade.breaker import BreakerConfig, RedisBreaker
from services.limits import RateLimiter


async def test_concurrent_checks_share_round_trips_and_each_tenant_gets_exactly_its_limit(redis_url: str) -> None:
    limiter = RateLimiter(redis_url, RedisBreaker(), prefix="test-rate-shared")
    if time.time() % 60 > 55:  # all in one one-minute window
        await asyncio.sleep(61 - time.time() % 60)
    tenants = ["busy", "quiet"] * 30
    waits = await asyncio.gather(*(limiter.retry_after(t, 20) for t in tenants))
    admitted = {t: sum(w is None for tenant, w in zip(tenants, waits, strict=True) if tenant == t) for t in tenants}
    assert admitted == {"busy": 20, "quiet": 20}, "each tenant's 30 requests: the first 20 pass"
    assert all(1 <= w <= 61 for w in waits if w is not None)
    assert limiter.round_trips < len(tenants) / 4, f"{limiter.round_trips} pipelines for {len(tenants)} checks"
    window = int(time.time() // 60)
    with redis.Redis.from_url(redis_url) as client:
        counts = client.mget([f"test-rate-shared:{t}:{window}" for t in ("busy", "quiet")])
    assert counts == [b"30", b"30"], "every request counted once"
    assert await limiter.retry_after("fresh", 1) is None and await limiter.retry_after("fresh", 1) is not None
    await limiter.close()


async def test_requests_pass_while_redis_is_unreachable() -> None:
    breaker = RedisBreaker(BreakerConfig(timeout_ms=200, cooldown_s=60))
    limiter = RateLimiter("redis://127.0.0.1:1", breaker, prefix="test-rate-down")
    assert await asyncio.gather(*(limiter.retry_after("t", 1) for _ in range(5))) == [None] * 5
    assert breaker.failures >= 1 and breaker.state == "open"
    await limiter.close()
