"""Tenant- and context-scoped semantic cache on RediSearch, batched (RedisVL creates the index; a lookup is
a pipeline of FT.SEARCH commands written out, see ``search_command``, and a store one pipeline of the
entries' hashes and their partitions' counts, see ``_write``).

Similarity is on the user's question only (cosine, with the configured embedder: by default a
static embedding distilled from MiniLM; each embedder has its own index). A near vector is not
enough for a hit: the nearest entries within the distance threshold are checked in turn by the
wording guard (``cascade/wording.py``), which refuses an entry whose question differs in a word
that changes the answer ("largest" for "smallest", a "not", a number). Everything else the model saw — system
prompt, context documents, generation parameters — is hashed into a ``scope``; tenant and scope
together make the ``partition`` tag a lookup filters on (one tag: a filter on two costs Redis half as
much again per search), which must match exactly: the same question about another document, or from
another tenant, never hits. A batch of queries costs one batched embedding and one pipelined round
trip for the lookups (batches that come while a lookup is under way wait for it and are looked up
together), and one more for the stores and their counts. A cold cache costs no embedding
at all: each store counts its entries in a marker per partition (and one for the index) that
outlives them, a lookup embeds only the questions whose marker is set (markers read in one round
trip, remembered for ``marker_memo_s``), and the others are embedded when their answers are stored,
off the request path.
The counts also pick each search's strategy (``hybrid_policy``): brute force over a small
partition's entries, the HNSW graph for a partition that is most of the index. Redis faults turn the cache off
for that call, with a warning and a counter, and open the Redis circuit breaker, which skips the
cache at once until its cool-down ends; they never fail a request. A question that cannot be
embedded, or an entry that cannot be built, is a miss or an unstored answer for that query alone,
logged and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cascade.breaker import CircuitOpenError, RedisBreaker, RedisFaultError
from cascade.coalesce import Coalescer
from cascade.embeddings import Embedder, EmbedderConfig, StaticConfig
from cascade.redis_clients import connect
from cascade.schemas import Query, RoutedAnswer
from cascade.telemetry import count_dropped
from cascade.wording import same_question

log = logging.getLogger(__name__)


class CacheConfig(BaseModel):
    """Semantic cache settings."""

    enabled: bool = True
    embedder: EmbedderConfig = Field(default_factory=StaticConfig)
    distance_threshold: float = Field(default=0.4, ge=0.0, le=2.0, description=(
        "cosine distance for a hit candidate; the wording guard then decides (bench_embedders: 0.4 keeps 81% "
        "of paraphrases at 0.01% false hits with the static embedder)"))
    candidates: int = Field(default=3, ge=1, le=50, description="nearest entries the wording guard checks")
    wording_guard: bool = Field(default=True, description=(
        "refuse an entry whose question differs in a word that changes the answer (cascade/wording.py)"))
    ttl_s: int = Field(default=3600, ge=1)
    min_small_confidence: float = Field(default=0.9, ge=0.0, le=1.0,
                                        description="store small-model answers only at or above this confidence")
    index_name: str = "cascade-cache"
    batches_min_entries: int = Field(default=2000, ge=1, description=(
        "a partition with at least this many entries, holding at least ``batches_min_share`` of the index, "
        "is searched in HNSW batches; smaller ones by brute force over their entries (see hybrid_policy)"))
    batches_min_share: float = Field(default=0.25, ge=0.0, le=1.0)
    hnsw_m: int = Field(default=16, ge=2, le=512, description="HNSW graph edges per node")
    hnsw_ef_construction: int = Field(default=64, ge=1, description=(
        "HNSW candidates per insert: each stored answer is one insert, the largest Redis command of a cache "
        "miss (bench_cache_graph: 64 costs less than half of RediSearch's default 200 per insert)"))
    hnsw_ef_runtime: int = Field(default=40, ge=1, description=(
        "HNSW candidates per search through the graph (BATCHES); RediSearch's default 10 loses paraphrases "
        "that brute force finds (bench_cache_graph)"))
    marker_memo_s: float = Field(default=1.0, ge=0.0, description=(
        "how long a replica trusts the entry counts it read for a partition (tenant and scope) and the index; "
        "an entry another replica stores in a cold partition is found after at most this long"))


def scope_of(query: Query) -> str:
    """Hash of everything the model saw except the user's question (its place in the conversation kept:
    the turns before and after it are not the same conversation), and whether it came as a prompt or
    as chat messages."""
    messages = [m.model_dump() for m in query.messages or []]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    conversation = [m if i != last_user else {"role": "user", "question": True} for i, m in enumerate(messages)]
    material = {"conversation": conversation, "prompt": query.prompt is not None, "context": query.context,
                "params": query.params.model_dump(mode="json")}
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def tag_value(value: str) -> str:
    """A tag value safe for a RediSearch tag filter (hex digests and tenant ids)."""
    return hashlib.sha256(value.encode()).hexdigest()[:24]


SCHEMA_VERSION = 3  # part of the index name: an index of an older schema is never read with this one


def entry_tags(query: Query) -> dict[str, str]:
    """The exact-match tags an entry carries; a lookup filters on ``partition`` (tenant and scope)."""
    tenant, scope = tag_value(query.tenant), tag_value(scope_of(query))
    return {"tenant": tenant, "scope": scope, "partition": tag_value(f"{tenant}:{scope}")}


def hybrid_policy(entries: int, index_entries: int, config: CacheConfig) -> str | None:
    """How RediSearch should search a partition of ``entries`` in an index of ``index_entries``:
    "BATCHES" (the HNSW graph, filtered batch by batch) for a partition that is a large share of a large
    index, else None (RediSearch's choice, which here is always brute force over the partition's
    entries). Measured on a local Redis 8 (256-d, top 3): one partition of 30,000 entries costs 2.8 ms
    by brute force and 0.15 ms in batches; 3,000 partitions of 10 cost 25 µs by brute force and 11.5 ms
    in batches."""
    if entries >= config.batches_min_entries and entries >= config.batches_min_share * max(index_entries, 1):
        return "BATCHES"
    return None


def blank_rows(vectors: np.ndarray) -> np.ndarray:
    """Per row, whether it holds a NaN (a question not embedded, or one that cannot be) or only zeros (a
    question of no word the embedder knows, such as emoji: a vector with no direction, near nothing)."""
    return np.isnan(vectors).any(axis=1) | ~vectors.any(axis=1)


class Candidate(NamedTuple):
    """A near entry a search returned: its cosine distance, its question, its answer's JSON."""

    distance: float
    question: str
    answer: bytes


def candidates(reply: Any) -> list[Candidate]:
    """The entries of an FT.SEARCH reply in RESP2 (a count, then key and fields per entry) or RESP3 (a
    map with ``results``), nearest first; an entry without an answer is left out."""
    if isinstance(reply, dict):
        rows = [{_text(k): v for k, v in row.items()} for row in {_text(k): v for k, v in reply.items()}["results"]]
        entries = [{_text(k): v for k, v in row.get("extra_attributes", {}).items()} for row in rows]
    else:
        entries = [dict(zip(map(_text, found[::2]), found[1::2], strict=True)) for found in reply[2::2]]
    return [Candidate(float(e["vector_distance"]), _text(e.get("question", b"")), _bytes(e["answer"]))
            for e in entries if "answer" in e and "vector_distance" in e]


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"a reply field of type {type(value).__name__}, not text")


def _bytes(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"a reply field of type {type(value).__name__}, not text")


@dataclass
class CacheStats:
    """Counters a metrics exporter reads."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    errors: int = 0


@dataclass
class CacheLookup:
    """Hits (or None) per query, and the question embeddings to reuse when storing: a row of NaN
    where the question was not embedded (its scope is cold; the store embeds it), None for a
    question the embedder could not read (never stored)."""

    hits: list[RoutedAnswer | None]
    vectors: np.ndarray
    tags: Sequence[dict[str, str] | None]  # per query, its entry tags (``tags_of``; None: none), for the store
    unreadable: frozenset[int] = frozenset()

    def vector(self, i: int) -> np.ndarray | None:
        """Query ``i``'s embedding (NaN if not computed yet), or None if it cannot have one."""
        return None if i in self.unreadable else self.vectors[i]

    def part(self, start: int, stop: int) -> CacheLookup:
        """The lookup of queries ``start`` to ``stop``, numbered from 0."""
        return CacheLookup(self.hits[start:stop], self.vectors[start:stop], self.tags[start:stop],
                           frozenset(i - start for i in self.unreadable if start <= i < stop))


@dataclass
class SemanticCache:
    """Lookups and stores for whole batches; see the module docstring."""

    redis_url: str
    config: CacheConfig = field(default_factory=CacheConfig)
    embedder: Embedder | None = None  # None: built from ``config.embedder``
    stats: CacheStats = field(default_factory=CacheStats)
    breaker: RedisBreaker = field(default_factory=RedisBreaker)

    def __post_init__(self) -> None:
        from redisvl.index import AsyncSearchIndex
        from redisvl.schema import IndexSchema

        if self.embedder is None:  # load (or distil) the configured model now, not on the first request
            self._embedder: Embedder = self.config.embedder.build()
            self._embedder.embed(["warm-up"])
        else:
            self._embedder = self.embedder
        self.dimensions = self._embedder.dimensions
        self.index_name = f"{self.config.index_name}-{self._embedder.name}-v{SCHEMA_VERSION}"
        self.schema = {  # the index's RediSearch schema, as RedisVL reads it
            "index": {"name": self.index_name, "prefix": f"{self.index_name}:", "storage_type": "hash"},
            "fields": [  # the entry's other fields (scope, question, answer, created) are stored, not indexed
                {"name": "tenant", "type": "tag"},
                {"name": "partition", "type": "tag"},
                {"name": "embedding", "type": "vector", "attrs": {
                    "dims": self.dimensions, "distance_metric": "cosine", "algorithm": "hnsw", "datatype": "float32",
                    "m": self.config.hnsw_m, "ef_construction": self.config.hnsw_ef_construction}},
            ],
        }
        self._client = connect(self.redis_url)  # the index's searches and stores, and the markers
        self._index = AsyncSearchIndex(IndexSchema.from_dict(self.schema), redis_client=self._client)
        self._ready = False
        self._sizes: dict[str, tuple[int, float]] = {}  # marker key -> (entries stored, trusted until)
        self._lookups = Coalescer(self._lookup_together)
        self.size_key = f"{self.index_name}:entries"

    async def ensure_index(self) -> None:
        """Create the index if it does not exist."""
        if not self._ready:
            await self.breaker.call(lambda: self._index.create(overwrite=False), background=True)
            self._ready = True

    def _forget_index(self, error: BaseException) -> None:
        """After an error Redis answered (a restarted Redis may have lost the index), create it again
        on the next call; after a timeout or refused connection, the index is still there."""
        cause = error.__cause__ if isinstance(error, RedisFaultError) else error
        if not isinstance(cause, (TimeoutError, OSError, RedisConnectionError, RedisTimeoutError, CircuitOpenError)):
            self._ready = False

    def embed(self, queries: Sequence[Query]) -> np.ndarray:
        """One batched embedding of the questions; if the batch fails, each question alone, with a row
        of NaN for a question that cannot be embedded (it is a miss and is not stored)."""
        try:
            return self._embedder.embed([q.question for q in queries])
        except Exception as error:
            log.warning("embedding a batch of %d questions failed (%s); embedding them one by one",
                        len(queries), type(error).__name__)
        rows = np.full((len(queries), self.dimensions), np.nan, np.float32)
        for i, query in enumerate(queries):
            try:
                rows[i] = self._embedder.embed([query.question])[0]
            except Exception as error:
                self.stats.errors += 1
                log.warning("query %s: question not embedded, no cache for it: %s", query.id, type(error).__name__)
        return rows

    async def _embed_off_loop(self, queries: Sequence[Query]) -> np.ndarray:
        """``embed``, in a worker thread unless the embedder is cheap enough for the event loop."""
        if self._embedder.cheap:
            return self.embed(queries)
        return await asyncio.to_thread(self.embed, queries)

    @staticmethod
    def tags_of(queries: Sequence[Query]) -> list[dict[str, str] | None]:
        """Each query's entry tags, computed once per lookup; None where its scope cannot be hashed
        (e.g. a value the hash cannot encode: no lookup, for that query alone)."""
        tags: list[dict[str, str] | None] = []
        for query in queries:
            try:
                tags.append(entry_tags(query))
            except Exception as error:
                tags.append(None)
                log.warning("query %s: no cache lookup: %s", query.id, type(error).__name__)
        return tags

    def marker_key(self, tags: dict[str, str]) -> str:
        """The key that counts the entries stored in the partition of these entry tags."""
        return f"{self.index_name}:warm:{tags['partition']}"

    async def partition_sizes(self, tags: Sequence[dict[str, str] | None]) -> tuple[list[int], int]:
        """Per query (by its entry tags), the entries stored in its partition while they live (0: a cold
        partition, nothing to look up), and the same count for the whole index: markers remembered for
        ``marker_memo_s``, the others read in one round trip. A query without tags is cold."""
        keys = [None if t is None else self.marker_key(t) for t in tags]
        now = time.monotonic()
        unknown = sorted({k for k in [*keys, self.size_key]
                          if k is not None and self._sizes.get(k, (0, 0.0))[1] <= now})
        if unknown:
            found = await self.breaker.call(lambda: self._client.mget(unknown))
            until = now + self.config.marker_memo_s
            self._sizes.update({k: (int(v or 0), until) for k, v in zip(unknown, found, strict=True)})
            if len(self._sizes) > 100_000:
                self._sizes = {k: v for k, v in self._sizes.items() if v[1] > now}
        return [0 if k is None else self._sizes[k][0] for k in keys], self._sizes[self.size_key][0]

    @property
    def embedder_name(self) -> str:
        return self._embedder.name

    async def lookup(self, queries: Sequence[Query], known: np.ndarray | None = None) -> CacheLookup | None:
        """The cached answer for each query, or None; all misses if Redis fails; None (no embedding,
        no call) while the Redis circuit is open. Only questions whose scope has entries are embedded,
        and not those with a row in ``known`` (embeddings computed already, NaN where not). Lookups that
        come while another is under way are made together (``cascade/coalesce.py``): one embedder call
        and one Redis round trip for all of them."""
        if not self.breaker.allow():
            return None
        return await self._lookups((queries, known))

    async def _lookup_together(self, requests: list[tuple[Sequence[Query], np.ndarray | None]]) -> list[CacheLookup]:
        """One lookup of the requests' queries, split back per request."""
        if len(requests) == 1:
            return [await self._lookup(*requests[0])]
        queries = [q for batch, _ in requests for q in batch]
        known = None
        if any(k is not None for _, k in requests):
            known = np.concatenate([np.full((len(batch), self.dimensions), np.nan, np.float32) if k is None else k
                                    for batch, k in requests])
        together = await self._lookup(queries, known)
        ends = np.cumsum([len(batch) for batch, _ in requests]).tolist()
        return [together.part(end - len(batch), end) for (batch, _), end in zip(requests, ends, strict=True)]

    async def _lookup(self, queries: Sequence[Query], known: np.ndarray | None) -> CacheLookup:
        vectors = np.full((len(queries), self.dimensions), np.nan, np.float32)
        if known is not None:
            vectors[:] = known
        tags = self.tags_of(queries)
        try:
            sizes, index_size = await self.partition_sizes(tags)
        except Exception as error:  # Redis down: serve without the cache; the stores embed later
            self.stats.errors += 1
            log.warning("semantic cache markers unreadable, serving without the cache: %s", error)
            return CacheLookup([None] * len(queries), vectors, tags)
        warm = [i for i, size in enumerate(sizes) if size > 0]
        if not warm:
            self.stats.misses += len(queries)
            return CacheLookup([None] * len(queries), vectors, tags)
        blank = blank_rows(vectors)
        pending = [i for i in warm if blank[i]]
        if pending:
            vectors[pending] = await self._embed_off_loop([queries[i] for i in pending])
            blank = blank_rows(vectors)
        unreadable = frozenset(i for i in warm if blank[i])
        policies = [hybrid_policy(size, index_size, self.config) for size in sizes]
        return CacheLookup(await self.search(queries, vectors, tags, policies), vectors, tags, unreadable)

    def search_command(self, vector: np.ndarray, partition: str, policy: str | None) -> list[str | int | bytes]:
        """The FT.SEARCH of one question's nearest entries in its partition (the query RedisVL's
        ``VectorQuery`` builds, written out: building one costs more than the search's own round trip
        here). ``partition`` is a hex digest, so it needs no escaping in the tag filter."""
        hybrid = f" HYBRID_POLICY {policy}" if policy else ""
        knn = (f"(@partition:{{{partition}}})=>[KNN {self.config.candidates} @embedding $vector{hybrid} "
               f"EF_RUNTIME {self.config.hnsw_ef_runtime} AS vector_distance]")
        return ["FT.SEARCH", self.index_name, knn, "RETURN", 3, "question", "answer", "vector_distance",
                "SORTBY", "vector_distance", "ASC", "DIALECT", 2, "LIMIT", 0, self.config.candidates,
                "PARAMS", 2, "vector", vector.tobytes()]

    async def search(self, queries: Sequence[Query], vectors: np.ndarray,
                     tags: Sequence[dict[str, str] | None] | None = None,
                     policies: Sequence[str | None] | None = None) -> list[RoutedAnswer | None]:
        """Look up already-embedded questions in one pipeline round trip (``tags``: ``tags_of(queries)``,
        if the caller has them already; ``policies``: each search's ``hybrid_policy``)."""
        tags = self.tags_of(queries) if tags is None else tags
        misses: list[RoutedAnswer | None] = [None] * len(queries)
        blank = blank_rows(vectors)
        searchable = [(i, t) for i, t in enumerate(tags) if t is not None and not blank[i]]
        if not searchable:
            return misses

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for i, t in searchable:
                    pipe.execute_command(*self.search_command(
                        vectors[i], t["partition"], policies[i] if policies is not None else None))
                return list(await pipe.execute())

        try:
            await self.ensure_index()
            replies = await self.breaker.call(run)
        except Exception as error:  # Redis down or misconfigured: serve without the cache
            self.stats.errors += 1
            self._forget_index(error)
            log.warning("semantic cache lookup failed, serving without it: %s", error)
            return misses
        hits = list(misses)
        for (i, _), reply in zip(searchable, replies, strict=True):
            try:
                found = candidates(reply)
            except (UnicodeDecodeError, KeyError, ValueError, TypeError, IndexError, AttributeError):  # unreadable
                self.stats.errors += 1
                log.warning("query %s: cache reply unreadable, a miss", queries[i].id, exc_info=True)
                continue
            hits[i] = self._hit(queries[i], found)
        self.stats.hits += sum(h is not None for h in hits)
        self.stats.misses += sum(h is None for h in hits)
        return hits

    def _hit(self, query: Query, found: Sequence[Candidate]) -> RoutedAnswer | None:
        """The nearest entry within the distance threshold whose question the wording guard accepts."""
        best = next((c for c in found if c.distance <= self.config.distance_threshold and (
            not self.config.wording_guard or same_question(query.question, c.question))), None)
        if best is None:
            return None
        try:
            answer = RoutedAnswer.model_validate_json(best.answer)
        except ValueError as error:
            log.warning("query %s: unreadable cache entry skipped: %s", query.id, error)
            return None
        return answer.model_copy(update={
            "request_id": query.id, "cost": 0.0, "attempts": [], "latency": [], "cache_hit": True,
            "reason": f"cache hit (distance {best.distance:.3f}); originally: {answer.reason}",
        })

    def storable(self, answer: RoutedAnswer, last_tier: str) -> bool:
        """Answers of the last tier, or small-model answers confident enough; never degraded or empty ones."""
        if answer.degraded or not answer.attempts or not answer.answer.strip():
            return False
        return answer.tier == last_tier or (answer.confidence or 0.0) >= self.config.min_small_confidence

    async def store(self, queries: Sequence[Query], answers: Sequence[RoutedAnswer], vectors: np.ndarray,
                    last_tier: str, tags: Sequence[dict[str, str] | None] | None = None) -> int:
        """Store the storable answers in one pipeline, embedding the questions the lookup did not (rows
        of NaN), and count them in their partitions; returns how many were stored. ``tags``: the
        lookup's entry tags per query (None where it has none: computed here). An entry that cannot be
        built is logged and counted (``cascade.records.dropped``) and never stops the others."""
        chosen = [i for i, a in enumerate(answers) if self.storable(a, last_tier)]
        blank = blank_rows(vectors)
        pending = [i for i in chosen if blank[i]]
        if pending and not self.breaker.allow():  # Redis is down: no embedding for a store that cannot happen
            return 0
        if pending:
            vectors = np.array(vectors, np.float32)
            vectors[pending] = await self._embed_off_loop([queries[i] for i in pending])
            blank = blank_rows(vectors)
            chosen = [i for i in chosen if not blank[i]]
        if not chosen:
            return 0
        now = time.time()
        entries: dict[str, dict[str, Any]] = {}
        markers: dict[str, int] = {}
        for i in chosen:
            try:
                known = tags[i] if tags is not None else None
                entry = known if known is not None else entry_tags(queries[i])
                entries[self._index.key(os.urandom(16).hex())] = {
                    **entry, "question": queries[i].question, "answer": answers[i].model_dump_json(),
                    "created": now, "embedding": np.asarray(vectors[i], np.float32).tobytes()}
                key = self.marker_key(entry)
                markers[key] = markers.get(key, 0) + 1
            except Exception as error:
                self.stats.errors += 1
                count_dropped("cache", answers[i].tenant, type(error).__name__)
                log.warning("request %s: answer not cached, its entry cannot be built: %s: %s",
                            answers[i].request_id, type(error).__name__, error)
        if not entries:
            return 0
        try:
            await self.ensure_index()
            await self.breaker.call(lambda: self._write(entries, markers), background=True)
        except Exception as error:
            self.stats.errors += 1
            self._forget_index(error)
            log.warning("semantic cache store failed, answers not cached: %s", error)
            return 0
        self.stats.stores += len(entries)
        return len(entries)

    async def _write(self, entries: dict[str, dict[str, Any]], markers: dict[str, int]) -> None:
        """Write the entries (hashes the index picks up by their key prefix, as RedisVL's ``load``
        writes them) and count them in each partition's marker and in the index's, in one round trip:
        the pipeline runs in order, so a marker never announces entries that are not there yet. The
        markers live as long as the entries. A count is of entries stored while its key lived: it
        overstates a partition whose older entries expired, as much as it overstates the index."""
        ttl = self.config.ttl_s
        counted = [*markers.items(), (self.size_key, sum(markers.values()))]
        async with self._client.pipeline(transaction=False) as pipe:
            for key, entry in entries.items():
                pipe.hset(key, mapping=entry)
                pipe.expire(key, ttl)
            for key, stored in counted:
                pipe.incrby(key, stored)
                pipe.expire(key, ttl)
            replies = await pipe.execute()
        counts = replies[2 * len(entries)::2]
        until = time.monotonic() + self.config.marker_memo_s
        self._sizes.update({key: (int(count), until) for (key, _), count in zip(counted, counts, strict=True)})

    async def close(self) -> None:
        await self._index.disconnect()
        await self._client.aclose()
