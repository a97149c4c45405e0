"""Latency of the cached path while Redis is stopped, against the same router with no Redis at all.

The router runs in-process (scripted tiers, so the figures are the router's own overhead) with the
semantic cache, the feedback log and live thresholds on one local Redis. Redis is then stopped with
SIGSTOP (connections stay open, nothing answers: the worst case, where every call would wait for a
timeout) and the same requests are routed again; the circuit breaker should make that cost what
the no-Redis configuration costs. Printed: p50 / p95 per request for each configuration and the
ratio of p50s (target: stopped / no-Redis <= 1.10).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

from cascade.breaker import BreakerConfig, RedisBreaker
from cascade.cache import CacheConfig, SemanticCache
from cascade.embeddings import MiniLMEmbedder
from cascade.feedback import FeedbackConfig, FeedbackLog
from cascade.local_redis import LocalRedis
from cascade.router import Router
from cascade.schemas import Query
from cascade.thresholds import LiveThresholds
from tests.cascade.test_redis import two_tier_router
from tests.conftest import free_port


async def request_ms(router: Router, prompt: str) -> float:
    """Milliseconds of one single-query request."""
    started = time.perf_counter()
    await router.route([Query(prompt=prompt)])
    return (time.perf_counter() - started) * 1000


async def latencies(router: Router, n: int, label: str) -> np.ndarray:
    """Milliseconds per single-query request, one after another."""
    return np.array([await request_ms(router, f"easy {label} question {i}") for i in range(n)])


async def alternating(first: Router, second: Router, n: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """``latencies`` of two routers, request by request in turn (``first`` first at even requests, second
    at odd ones): the machine's speed swings over runs of a few hundred requests here (the same path's p50
    from 0.21 to 0.46 ms), and a swing between two runs moved their ratio by 0.2."""
    ms = np.empty((2, n))
    for i in range(n):
        for row in (0, 1) if i % 2 == 0 else (1, 0):
            ms[row, i] = await request_ms((first, second)[row], f"easy {label} question {i}")
    return ms[0], ms[1]


def line(name: str, ms: np.ndarray) -> str:
    return f"{name:<28} p50 {np.percentile(ms, 50):7.3f} ms   p95 {np.percentile(ms, 95):7.3f} ms"


async def main_async(n: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        server = LocalRedis(port=free_port(), state_dir=Path(state))
        server.start()
        embedder = MiniLMEmbedder()
        breaker = RedisBreaker(BreakerConfig(cooldown_s=3600))
        with_redis = two_tier_router(
            cache=SemanticCache(server.url, CacheConfig(index_name="bench-outage"), embedder, breaker=breaker),
            feedback=FeedbackLog(server.url, FeedbackConfig(stream="bench:outage"), breaker=breaker),
            thresholds=LiveThresholds(server.url, breaker=breaker))
        without = two_tier_router()
        await latencies(with_redis, 20, "warm-up")
        up = await latencies(with_redis, n, "up")
        pid = server.pid()
        assert pid is not None
        attempts = breaker.attempts
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped, plain = [], []
            for r in range(repeats):  # request by request in turn, so that machine load hits both alike
                pair = await alternating(with_redis, without, n, f"run-{r}")
                stopped.append(pair[0])
                plain.append(pair[1])
        finally:
            os.kill(pid, signal.SIGCONT)
        first, rest = stopped[0][0], np.concatenate(stopped)[1:]
        no_redis = np.concatenate(plain)
        print(f"router overhead per request, scripted tiers, {n} requests x {repeats} runs")
        print(line("Redis up (cache misses)", up))
        print(line("Redis stopped (SIGSTOP)", rest))
        print(line("no Redis configured", no_redis))
        tried = breaker.attempts - attempts - 1
        print(f"first request after the stop: {first:.1f} ms (one timeout of {breaker.config.timeout_ms:g} ms "
              f"opens the circuit); Redis calls attempted while open: {tried}, skipped: {breaker.skipped}")
        print(f"p50 stopped / no-Redis: {np.percentile(rest, 50) / np.percentile(no_redis, 50):.3f} (target <= 1.10)")
        await with_redis.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main_async(args.requests, args.repeats))


if __name__ == "__main__":
    main()
