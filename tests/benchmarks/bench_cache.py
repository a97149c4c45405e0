"""Semantic cache lookup latency on a real local Redis at 10,000 and 100,000 entries (the embedders
are measured by ``bench_embedders``).

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

from cascade.cache import CacheConfig, SemanticCache, scope_of, tag_value
from cascade.embeddings import MiniLMEmbedder
from cascade.local_redis import LocalRedis
from cascade.schemas import Query
from tests.conftest import free_port

TENANTS = [f"tenant-{i}" for i in range(10)]
SCOPE = tag_value(scope_of(Query(prompt="any question")))


def fill(client: object, prefix: str, start: int, stop: int, rng: np.random.Generator) -> None:
    """Random unit vectors spread over ten tenants, written in pipelined chunks."""
    for chunk in range(start, stop, 5000):
        ids = range(chunk, min(chunk + 5000, stop))
        vectors = rng.normal(size=(len(ids), MiniLMEmbedder.dimensions)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
        for i, vector in zip(ids, vectors, strict=True):
            pipe.hset(f"{prefix}{i}", mapping={"tenant": tag_value(TENANTS[i % 10]), "scope": SCOPE,
                                               "question": f"q{i}", "answer": "{}", "created": 0,
                                               "embedding": vector.tobytes()})
        pipe.execute()


async def lookup_latencies(cache: SemanticCache, vectors: np.ndarray) -> np.ndarray:
    """Milliseconds per single-query lookup (embedding excluded)."""
    times = []
    for i, vector in enumerate(vectors):
        query = Query(tenant=TENANTS[i % 10], prompt=f"probe {i}")
        started = time.perf_counter()
        await cache.search([query], vector[None, :])
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
                fill(client, f"{cache.index_name}:", filled, size, rng)
                filled = size
                while int(client.ft(cache.index_name).info()["indexing"]):
                    time.sleep(0.2)
                load_s = time.perf_counter() - started
                await lookup_latencies(cache, probes[:50])
                latency = await lookup_latencies(cache, probes)
                print(f"  {size:>7,} entries  p50 {np.percentile(latency, 50):6.2f} ms  p99 "
                      f"{np.percentile(latency, 99):6.2f} ms   (loaded and indexed in {load_s:.0f} s)")
            await cache.close()
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
