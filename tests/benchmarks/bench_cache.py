"""Semantic cache lookup latency on a real local Redis at 10,000 and 100,000 entries (the embedders
are measured by ``bench_embedders``): entries spread over ten tenants, then all of them in one
partition (one tenant, one scope: a chat app without a system prompt), searched by brute force over
the partition (RediSearch's own choice) and through the HNSW graph (``BATCHES``, what
``cascade.cache.hybrid_policy`` picks for it).

Target: lookup <= 2 ms p50 at 100,000 entries (one tenant- and scope-filtered vector query for the
``candidates`` nearest entries).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from cascade.cache import CacheConfig, SemanticCache
from cascade.embeddings import MiniLMEmbedder
from cascade.local_redis import LocalRedis
from cascade.schemas import Query
from tests.conftest import free_port

TENANTS = [f"tenant-{i}" for i in range(10)]


def fill(client: object, cache: SemanticCache, start: int, stop: int, rng: np.random.Generator,
         tenants: list[str] = TENANTS) -> None:
    """Random unit vectors spread over ``tenants``, written in pipelined chunks."""
    tags = cache.tags_of([Query(tenant=tenant, prompt="any question") for tenant in tenants])  # the lookups'
    for chunk in range(start, stop, 5000):
        ids = range(chunk, min(chunk + 5000, stop))
        vectors = rng.normal(size=(len(ids), MiniLMEmbedder.dimensions)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
        for i, vector in zip(ids, vectors, strict=True):
            pipe.hset(f"{cache.index_name}:{i}", mapping={**tags[i % len(tenants)], "question": f"q{i}", "answer": "{}",
                                                          "created": 0, "embedding": vector.tobytes()})
        pipe.execute()


async def lookup_latencies(cache: SemanticCache, vectors: np.ndarray, tenants: list[str] = TENANTS,
                          policy: str | None = None) -> np.ndarray:
    """Milliseconds per single-query lookup (embedding excluded)."""
    times = []
    for i, vector in enumerate(vectors):
        query = Query(tenant=tenants[i % len(tenants)], prompt=f"probe {i}")
        started = time.perf_counter()
        await cache.search([query], vector[None, :], policies=[policy])
        times.append((time.perf_counter() - started) * 1000)
    return np.array(times)


async def main_async(sizes: list[int], lookups: int) -> None:
    import redis

    with tempfile.TemporaryDirectory() as state:
        server = LocalRedis(port=free_port(), state_dir=Path(state))
        server.start()
        try:
            cache = SemanticCache(server.url, CacheConfig(index_name="bench"), MiniLMEmbedder())
            await cache.ensure_index()
            client = redis.Redis.from_url(server.url)
            rng = np.random.default_rng(0)
            probes = rng.normal(size=(lookups, MiniLMEmbedder.dimensions)).astype(np.float32)
            probes /= np.linalg.norm(probes, axis=1, keepdims=True)
            filled = 0
            print(f"semantic cache lookup (k={cache.config.candidates}, filtered by tenant and scope), "
                  "local Redis + RediSearch HNSW")
            for size in sizes:
                started = time.perf_counter()
                fill(client, cache, filled, size, rng)
                filled = size
                while int(client.ft(cache.index_name).info()["indexing"]):
                    time.sleep(0.2)
                load_s = time.perf_counter() - started
                await lookup_latencies(cache, probes[:50])
                latency = await lookup_latencies(cache, probes)
                print(f"  {size:>7,} entries  p50 {np.percentile(latency, 50):6.2f} ms  p99 "
                      f"{np.percentile(latency, 99):6.2f} ms   (loaded and indexed in {load_s:.0f} s)")
            await cache.close()
            one = SemanticCache(server.url, CacheConfig(index_name="bench-one"), MiniLMEmbedder())
            await one.ensure_index()
            print("one partition holding every entry: brute force over it | HNSW batches")
            filled = 0
            for size in sizes:
                fill(client, one, filled, size, rng, TENANTS[:1])
                filled = size
                while int(client.ft(one.index_name).info()["indexing"]):
                    time.sleep(0.2)
                figures = []
                for policy in (None, "BATCHES"):
                    await lookup_latencies(one, probes[:20], TENANTS[:1], policy)
                    latency = await lookup_latencies(one, probes[:200], TENANTS[:1], policy)
                    p50, p99 = np.percentile(latency, [50, 99])
                    figures.append(f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
                print(f"  {size:>7,} entries  " + "  |  ".join(figures))
            await one.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--lookups", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main_async([int(s) for s in args.sizes.split(",")], args.lookups))


if __name__ == "__main__":
    main()
