"""What a cache miss costs the replica that routes it and Redis, in process, by kind of miss and batch
size: the serving benchmark's cache rows (``bench_openai_tiers --cache``) hold the target, but their
ratios swing by a tenth from one trial to the next, more than most changes to the miss path are worth;
this one measures that path alone, with no Serve, proxy or backend beside it, so that a change of tens
of microseconds shows.

Per request, for batches of new queries (``SemanticCache.lookup`` then ``store``, as the router calls
them): the replica's CPU in the lookup and in the store (``time.process_time``); where the miss embeds,
the embedder's share of it (the same questions embedded once more, alone); and Redis's CPU (``/proc``,
in clock ticks: steps of 0.01 ms per request in a block of 1,024 requests).
The kinds are the serving benchmark's: every query in a scope of its own (a cold cache: held, or
indexed with ``hold_new_partitions: false``), and every query a new question in one scope that has
entries (a warm scope: embedded, searched, its answer indexed). The questions of the warm scope differ
only in a number, so each search finds near entries the wording guard must refuse (the costliest
miss). Each kind runs in blocks, interleaved with the others, and the median block is printed. On
Serve, the router's lookups came in batches of 5 on average at concurrency 16 and 64, its stores in
the recorder's batches of tens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cascade.cache import CacheConfig, SemanticCache, blank_rows
from cascade.local_redis import LocalRedis
from cascade.schemas import Query, RoutedAnswer
from tests.benchmarks.bench_openai_tiers import new_question as question_body
from tests.benchmarks.bench_openai_tiers import new_scope as scope_body
from tests.benchmarks.cpu_accounting import cpu_seconds
from tests.conftest import free_port

ANSWER = "About twelve thousand people live there."


def new_scope() -> Query:
    """The serving benchmark's cold-scope request: the same question under a system prompt of its own."""
    return Query(messages=scope_body(0)["messages"])


def new_question() -> Query:
    """The serving benchmark's warm-scope request: a question never asked before, in one shared scope."""
    return Query(messages=question_body(0)["messages"])


def answer_to(query: Query) -> RoutedAnswer:
    """A large-tier answer, which the cache stores."""
    return RoutedAnswer.model_validate({
        "request_id": query.id, "tenant": query.tenant, "answer": ANSWER, "tier": "large", "model": "large",
        "confidence": None, "signals": None, "reason": "escalated", "cost": 0.001, "finish_reason": "stop",
        "prompt_tokens": 24, "completion_tokens": 9, "latency": [],
        "attempts": [{"tier": "large", "model": "large", "decision": None, "confidence": None,
                      "prompt_tokens": 24, "completion_tokens": 9, "cost": 0.001}]})


class Kind:
    """One kind of miss: its cache and the queries it is asked."""

    def __init__(self, name: str, cache: SemanticCache, make: Callable[[], Query], embeds: bool,
                 searches: bool = False) -> None:
        self.name, self.cache, self.make, self.embeds, self.searches = name, cache, make, embeds, searches
        self.blocks: dict[int, list[dict[str, float]]] = {}

    async def fill(self, entries: int) -> None:
        """Store ``entries`` answers in batches of 64, untimed."""
        for _ in range(0, entries, 64):
            queries = [self.make() for _ in range(64)]
            found = await self.cache.lookup(queries)
            assert found is not None
            await self.cache.store(queries, [answer_to(q) for q in queries], found.vectors, "large", found.tags,
                                   found.storing)

    async def block(self, batch: int, rounds: int, redis_pid: int) -> dict[str, float]:
        """CPU ms per request over ``rounds`` batches: lookup, store, embedding, Redis."""
        looked = stored = embedded = 0.0
        redis_before = cpu_seconds(redis_pid)
        for _ in range(rounds):
            queries = [self.make() for _ in range(batch)]
            answers = [answer_to(q) for q in queries]
            started = time.process_time()
            found = await self.cache.lookup(queries)
            between = time.process_time()
            assert found is not None and not any(found.hits), "a miss benchmark found a hit"
            assert not self.searches or not blank_rows(found.vectors).any(), "a warm lookup did not search"
            await self.cache.store(queries, answers, found.vectors, "large", found.tags, found.storing)
            stored += time.process_time() - between
            looked += between - started
            if self.embeds:
                before = time.process_time()
                self.cache.embed([q.question for q in queries], [q.id for q in queries])
                embedded += time.process_time() - before
        thousands = batch * rounds / 1000  # requests, so that seconds per thousand are ms per request
        return {"lookup": looked / thousands, "store": stored / thousands, "embedding": embedded / thousands,
                "redis": (cpu_seconds(redis_pid) - redis_before) / thousands}


async def main_async(batches: list[int], requests: int, repeats: int, entries: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        server = LocalRedis(port=free_port(), state_dir=Path(state))
        url = server.start()
        redis_pid = server.pid()
        assert redis_pid is not None
        try:
            kinds = [Kind("cold scopes, held", SemanticCache(url, CacheConfig(index_name="miss-held")), new_scope,
                          embeds=False),
                     Kind("cold scopes, indexed", SemanticCache(url, CacheConfig(
                         index_name="miss-indexed", hold_new_partitions=False)), new_scope, embeds=True),
                     Kind("warm scope", SemanticCache(url, CacheConfig(index_name="miss-warm")), new_question,
                          embeds=True, searches=True)]
            warm = kinds[-1]
            await warm.fill(entries)
            print(f"cache misses in process, local Redis, {os.cpu_count()} CPUs, {warm.cache.embedder_name} "
                  f"embedder; warm scope from {entries:,} entries; median of {repeats} interleaved blocks of "
                  f"{requests} requests; CPU ms per request")
            for _ in range(repeats):
                for batch in batches:
                    for kind in kinds:
                        figures = await kind.block(batch, max(requests // batch, 1), redis_pid)
                        kind.blocks.setdefault(batch, []).append(figures)
            print(f"{'':<22} {'batch':>5} {'lookup':>8} {'store':>8} {'replica':>8} {'embedding':>10} "
                  f"{'Redis':>8} {'total':>8}")
            for batch in batches:
                for kind in kinds:
                    median = {k: float(np.median([b[k] for b in kind.blocks[batch]])) for k in kind.blocks[batch][0]}
                    replica = median["lookup"] + median["store"]
                    print(f"{kind.name:<22} {batch:>5} {median['lookup']:>8.3f} {median['store']:>8.3f} "
                          f"{replica:>8.3f} {median['embedding']:>10.3f} {median['redis']:>8.3f} "
                          f"{replica + median['redis']:>8.3f}")
            for kind in kinds:
                await kind.cache.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8,32", help="queries per lookup and store, comma-separated")
    parser.add_argument("--requests", type=int, default=1024, help="per block")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per kind and batch size")
    parser.add_argument("--entries", type=int, default=4000, help="in the warm scope before the first block")
    args = parser.parse_args()
    asyncio.run(main_async([int(b) for b in args.batches.split(",")], args.requests, args.repeats, args.entries))


if __name__ == "__main__":
    main()
