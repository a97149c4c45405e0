"""Tenant- and context-scoped semantic cache on RedisVL, batched.

Similarity is on the user's question only (MiniLM, cosine). Everything else the model saw — system
prompt, context documents, generation parameters — is hashed into a ``scope`` tag that must match
exactly, as must the tenant: the same question about another document, or from another tenant,
never hits. A batch of queries costs one batched embedding and one pipelined round trip for the
lookups, and one more for the stores. Redis faults turn the cache off for that call, with a warning
and a counter; they never fail a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
from pydantic import BaseModel, Field

from cascade.embeddings import DIMENSIONS, MiniLMEmbedder
from cascade.schemas import Query, RoutedAnswer

log = logging.getLogger(__name__)


class CacheConfig(BaseModel):
    """Semantic cache settings."""

    enabled: bool = True
    distance_threshold: float = Field(default=0.2, ge=0.0, le=2.0, description="cosine distance for a hit")
    ttl_s: int = Field(default=3600, ge=1)
    min_small_confidence: float = Field(default=0.9, ge=0.0, le=1.0,
                                        description="store small-model answers only at or above this confidence")
    index_name: str = "cascade-cache"


def scope_of(query: Query) -> str:
    """Hash of everything the model saw except the user's question."""
    messages = [m.model_dump() for m in query.messages or []]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    conversation = [m for i, m in enumerate(messages) if i != last_user]
    material = {"conversation": conversation, "context": query.context, "params": query.params.model_dump(mode="json")}
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def tag_value(value: str) -> str:
    """A tag value safe for a RediSearch tag filter (hex digests and tenant ids)."""
    return hashlib.sha256(value.encode()).hexdigest()[:24]


def entry_tags(query: Query) -> dict[str, str]:
    """The exact-match tags an entry carries and a lookup filters on."""
    return {"tenant": tag_value(query.tenant), "scope": tag_value(scope_of(query))}


@dataclass
class CacheStats:
    """Counters a metrics exporter reads."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    errors: int = 0


@dataclass
class CacheLookup:
    """Hits (or None) per query, and the question embeddings to reuse when storing."""

    hits: list[RoutedAnswer | None]
    vectors: np.ndarray


@dataclass
class SemanticCache:
    """Lookups and stores for whole batches; see the module docstring."""

    redis_url: str
    config: CacheConfig = field(default_factory=CacheConfig)
    embedder: MiniLMEmbedder = field(default_factory=MiniLMEmbedder)
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        from redisvl.index import AsyncSearchIndex
        from redisvl.schema import IndexSchema

        schema = IndexSchema.from_dict({
            "index": {"name": self.config.index_name, "prefix": f"{self.config.index_name}:", "storage_type": "hash"},
            "fields": [
                {"name": "tenant", "type": "tag"},
                {"name": "scope", "type": "tag"},
                {"name": "question", "type": "text"},
                {"name": "answer", "type": "text"},
                {"name": "created", "type": "numeric"},
                {"name": "embedding", "type": "vector", "attrs": {
                    "dims": DIMENSIONS, "distance_metric": "cosine", "algorithm": "hnsw", "datatype": "float32"}},
            ],
        })
        self._index = AsyncSearchIndex(schema, redis_url=self.redis_url)
        self._ready = False

    async def ensure_index(self) -> None:
        """Create the index if it does not exist."""
        if not self._ready:
            await self._index.create(overwrite=False)
            self._ready = True

    def embed(self, queries: Sequence[Query]) -> np.ndarray:
        """One batched embedding of the questions."""
        return self.embedder.embed([q.question for q in queries])

    async def lookup(self, queries: Sequence[Query]) -> CacheLookup:
        """The cached answer for each query, or None; all misses if Redis fails."""
        vectors = await asyncio.to_thread(self.embed, queries)
        return CacheLookup(await self.search(queries, vectors), vectors)

    async def search(self, queries: Sequence[Query], vectors: np.ndarray) -> list[RoutedAnswer | None]:
        """Look up already-embedded questions in one pipeline round trip."""
        from redisvl.query import VectorQuery
        from redisvl.query.filter import Tag

        misses: list[RoutedAnswer | None] = [None] * len(queries)
        try:
            await self.ensure_index()
            searches = [
                VectorQuery(vector=vector.tobytes(), vector_field_name="embedding", num_results=1,
                            return_fields=["answer", "created"],
                            filter_expression=(Tag("tenant") == tags["tenant"]) & (Tag("scope") == tags["scope"]))
                for tags, vector in zip(map(entry_tags, queries), vectors, strict=True)
            ]
            results = await self._index.batch_query(searches, batch_size=max(len(searches), 1))
        except Exception as error:  # Redis down or misconfigured: serve without the cache
            self.stats.errors += 1
            self._ready = False  # a restarted Redis may have lost the index
            log.warning("semantic cache lookup failed, serving without it: %s", error)
            return misses
        hits: list[RoutedAnswer | None] = []
        for query, found in zip(queries, results, strict=True):
            best = found[0] if found else None
            if best is not None and float(best["vector_distance"]) <= self.config.distance_threshold:
                answer = RoutedAnswer.model_validate_json(best["answer"])
                hits.append(answer.model_copy(update={
                    "request_id": query.id, "cost": 0.0, "attempts": [], "latency": [], "cache_hit": True,
                    "reason": f"cache hit (distance {float(best['vector_distance']):.3f}); originally: {answer.reason}",
                }))
            else:
                hits.append(None)
        self.stats.hits += sum(h is not None for h in hits)
        self.stats.misses += sum(h is None for h in hits)
        return hits

    def storable(self, answer: RoutedAnswer, last_tier: str) -> bool:
        """Answers of the last tier, or small-model answers confident enough; never degraded ones."""
        if answer.degraded or not answer.attempts:
            return False
        return answer.tier == last_tier or (answer.confidence or 0.0) >= self.config.min_small_confidence

    async def store(self, queries: Sequence[Query], answers: Sequence[RoutedAnswer], vectors: np.ndarray,
                    last_tier: str) -> int:
        """Store the storable answers in one pipeline; returns how many were stored."""
        chosen = [i for i, a in enumerate(answers) if self.storable(a, last_tier)]
        if not chosen:
            return 0
        now = time.time()
        records = [{
            **entry_tags(queries[i]), "question": queries[i].question, "answer": answers[i].model_dump_json(),
            "created": now,
            "embedding": np.asarray(vectors[i], np.float32).tobytes(),
        } for i in chosen]
        try:
            await self.ensure_index()
            await self._index.load(records, ttl=self.config.ttl_s, batch_size=len(records))
        except Exception as error:
            self.stats.errors += 1
            self._ready = False
            log.warning("semantic cache store failed, answers not cached: %s", error)
            return 0
        self.stats.stores += len(records)
        return len(records)

    async def close(self) -> None:
        await self._index.disconnect()
