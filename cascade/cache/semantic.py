"""Lookups and stores of the semantic cache for whole batches (the package's docstring says how)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cascade.breaker import CircuitOpenError, RedisBreaker, RedisFaultError
from cascade.cache.config import CacheConfig
from cascade.cache.purge import cache_indexes, purge_tenant
from cascade.cache.schema import (
    SCHEMA_VERSION,
    Hold,
    entry_tags,
    held_key,
    holds_answers,
    index_schema,
    marker_key,
    question_field,
    tag_value,
)
from cascade.cache.search import Candidate, blank_rows, candidates, hybrid_policy, reply_bytes, search_command
from cascade.cache.wording import english_words, same_question
from cascade.coalesce import Coalescer
from cascade.embeddings import Embedder, embed_each
from cascade.redis_clients import connect
from cascade.schemas import Query, RoutedAnswer
from cascade.telemetry import count_dropped

log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    """Counters a metrics exporter reads."""

    hits: int = 0  # answers found and served (one the caller refused, below a query's own threshold, is a miss)
    misses: int = 0
    stores: int = 0
    errors: int = 0


NEW_PARTITION = -1  # a partition's entry count when it was never asked (no marker)
PROMOTED_MAX = 64  # held answers of one partition indexed when it is asked again (the rest are dropped)
PURGE_STEP_TIMEOUT_S = 10.0  # each Redis call of a purge (a search, a delete of ``purge.PAGE`` entries, a SCAN step)
Storing = Literal["hold", "index", "index_held"]  # how a query's answer is stored (``CacheLookup.storing``)
Asked = tuple[Sequence[Query], np.ndarray | None, Sequence[bool] | None]  # a lookup's queries, known rows, asking


@dataclass
class CacheLookup:
    """Hits (or None) per query, and the question embeddings to reuse when storing: a row of NaN
    where the question was not embedded (its scope is cold; the store embeds it), None for a
    question the embedder could not read (never stored)."""

    hits: list[RoutedAnswer | None]
    vectors: np.ndarray
    tags: Sequence[dict[str, str] | None]  # per query, its entry tags (``tags_of``; None: none), for the store
    unreadable: frozenset[int] = frozenset()
    storing: Sequence[Storing] | None = None  # per query, how its answer is stored (None: "index")

    def vector(self, i: int) -> np.ndarray | None:
        """Query ``i``'s embedding (NaN if not computed yet), or None if it cannot have one."""
        return None if i in self.unreadable else self.vectors[i]

    def part(self, start: int, stop: int) -> CacheLookup:
        """The lookup of queries ``start`` to ``stop``, numbered from 0."""
        return CacheLookup(self.hits[start:stop], self.vectors[start:stop], self.tags[start:stop],
                           frozenset(i - start for i in self.unreadable if start <= i < stop),
                           None if self.storing is None else self.storing[start:stop])


@dataclass
class SemanticCache:
    """Lookups and stores for whole batches; see the package's docstring (``cascade/cache/__init__.py``)."""

    redis_url: str
    config: CacheConfig = field(default_factory=CacheConfig)
    embedder: Embedder | None = None  # None: built from ``config.embedder``
    stats: CacheStats = field(default_factory=CacheStats)
    breaker: RedisBreaker = field(default_factory=RedisBreaker)
    deployment: str = ""  # what makes the answers (``answer_source``): another one's are never served

    def __post_init__(self) -> None:
        from redisvl.index import AsyncSearchIndex
        from redisvl.schema import IndexSchema

        if self.embedder is None:  # load (or distil) the configured model now, not on the first request
            self._embedder: Embedder = self.config.embedder.build()
            self._embedder.embed(["warm-up"])
        else:
            self._embedder = self.embedder
        if self.config.wording_guard:
            english_words()  # read now, not by the first request's guard
        self.dimensions = self._embedder.dimensions
        self.index_name = f"{self.config.index_name}-{self._embedder.name}-v{SCHEMA_VERSION}"
        self._client = connect(self.redis_url)  # the index's searches and stores, and the markers
        schema = IndexSchema.from_dict(index_schema(self.index_name, self.dimensions, self.config))
        self._index = AsyncSearchIndex(schema, redis_client=self._client)
        self._ready = False
        self._holding = self.config.hold_new_partitions  # and the server can (``ensure_index`` reads it)
        self._sizes: dict[str, tuple[int, float]] = {}  # marker key -> (entries stored, trusted until)
        self._lookups = Coalescer(self._lookup_together)
        self.size_key = f"{self.index_name}:entries"

    async def ensure_index(self) -> None:
        """Create the index if it does not exist and, with holding on, read whether the server can hold
        answers (``holds_answers``; if not, a new partition's first answer is indexed, as with holding off)."""
        if not self._ready:
            await self.breaker.call(lambda: self._index.create(overwrite=False), background=True)
            if self._holding and not holds_answers(await self.breaker.call(self._server_info, background=True)):
                self._holding = False
                log.warning("Redis before 7 cannot hold answers (SET NX GET, EXPIRE NX): a new partition's "
                            "first answer is indexed")
            self._ready = True

    async def _server_info(self) -> dict[str, Any]:
        """``INFO server``, or nothing where the server refuses INFO."""
        try:
            return dict(await self._client.info("server"))
        except ResponseError:
            return {}

    def _forget_index(self, error: BaseException) -> None:
        """After an error Redis answered (a restarted Redis may have lost the index), create it again
        on the next call; after a timeout or refused connection, the index is still there."""
        cause = error.__cause__ if isinstance(error, RedisFaultError) else error
        if not isinstance(cause, (TimeoutError, OSError, RedisConnectionError, RedisTimeoutError, CircuitOpenError)):
            self._ready = False

    def embed(self, questions: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        """One batched embedding of the questions (``embed_each``: a question that cannot be embedded
        gets a row of NaN, is a miss and is not stored; named by its label in the log)."""
        rows, failed = embed_each(self._embedder, questions, labels, "no cache for it")
        self.stats.errors += failed
        return rows

    async def _embed_off_loop(self, questions: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        """``embed``, in a worker thread unless the embedder is cheap enough for the event loop."""
        if self._embedder.cheap:
            return self.embed(questions, labels)
        return await asyncio.to_thread(self.embed, questions, labels)

    def tags_of(self, queries: Sequence[Query]) -> list[dict[str, str] | None]:
        """Each query's entry tags, computed once per lookup; None where its scope cannot be hashed
        (e.g. a value the hash cannot encode: no lookup, for that query alone)."""
        tags: list[dict[str, str] | None] = []
        for query in queries:
            try:
                tags.append(entry_tags(query, self.deployment))
            except Exception as error:
                tags.append(None)
                log.warning("query %s: no cache lookup: %s", query.id, type(error).__name__)
        return tags

    def marker_key(self, tags: dict[str, str]) -> str:
        """``schema.marker_key`` in this cache's index."""
        return marker_key(self.index_name, tags)

    def held_key(self, tags: dict[str, str]) -> str:
        """``schema.held_key`` in this cache's index."""
        return held_key(self.index_name, tags)

    async def partition_sizes(self, tags: Sequence[dict[str, str] | None]) -> tuple[list[int], int]:
        """Per query (by its entry tags), the entries stored in its partition while they live (0: none
        indexed, nothing to search; ``NEW_PARTITION``: never asked), and the same count for the whole
        index: markers remembered for ``marker_memo_s``, the others read in one round trip. A query
        without tags has 0."""
        keys = [None if t is None else self.marker_key(t) for t in tags]
        now = time.monotonic()
        unknown = sorted({k for k in [*keys, self.size_key]
                          if k is not None and self._sizes.get(k, (0, 0.0))[1] <= now})
        if unknown:
            found = await self.breaker.call(lambda: self._client.mget(unknown))
            until = now + self.config.marker_memo_s
            self._sizes.update({k: (NEW_PARTITION if v is None else int(v), until)
                                for k, v in zip(unknown, found, strict=True)})
            if len(self._sizes) > 100_000:
                self._sizes = {k: v for k, v in self._sizes.items() if v[1] > now}
        return [0 if k is None else self._sizes[k][0] for k in keys], max(self._sizes[self.size_key][0], 0)

    @property
    def embedder_name(self) -> str:
        return self._embedder.name

    async def lookup(self, queries: Sequence[Query], known: np.ndarray | None = None,
                     serves: Callable[[Query, RoutedAnswer], bool] | None = None,
                     asking: Sequence[bool] | None = None) -> CacheLookup | None:
        """The cached answer for each query, or None; all misses if Redis fails; None (no embedding,
        no call) while the Redis circuit is open. Only questions whose scope has entries are embedded,
        and not those with a row in ``known`` (embeddings computed already, NaN where not). ``serves``:
        whether a found answer may answer its query (one it refuses is a miss, and counted as one).
        ``asking``: per query, whether it may take a cached answer at all (None: all); the others are
        not embedded or searched, and not counted, but their partitions are read, so that their answers
        are stored as any other's. Lookups that come while another is under way are made together
        (``cascade/coalesce.py``): one embedder call and one Redis round trip for all of them."""
        if not self.breaker.allow():
            return None
        found = await self._lookups((queries, known, asking))
        if serves is not None:
            found.hits = [hit if hit is None or serves(query, hit) else None
                          for query, hit in zip(queries, found.hits, strict=True)]
        self._count([hit for i, hit in enumerate(found.hits) if asking is None or asking[i]])
        return found

    async def _lookup_together(self, requests: list[Asked]) -> list[CacheLookup]:
        """One lookup of the requests' queries, split back per request."""
        if len(requests) == 1:
            return [await self._lookup(*requests[0])]
        queries = [q for batch, _, _ in requests for q in batch]
        known = None
        if any(k is not None for _, k, _ in requests):
            known = np.concatenate([np.full((len(batch), self.dimensions), np.nan, np.float32) if k is None else k
                                    for batch, k, _ in requests])
        asking = None
        if any(a is not None for _, _, a in requests):
            asking = [one for batch, _, a in requests for one in ([True] * len(batch) if a is None else a)]
        together = await self._lookup(queries, known, asking)
        ends = np.cumsum([len(batch) for batch, _, _ in requests]).tolist()
        return [together.part(end - len(batch), end) for (batch, _, _), end in zip(requests, ends, strict=True)]

    async def _lookup(self, queries: Sequence[Query], known: np.ndarray | None,
                      asking: Sequence[bool] | None = None) -> CacheLookup:
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
        searched = sizes if asking is None else [size if a else NEW_PARTITION for size, a in zip(sizes, asking,
                                                                                                 strict=True)]
        exact = self._held_hits(queries, tags, searched)
        near = self._near_hits(queries, vectors, tags, searched, index_size)
        if self._holding and 0 in searched and any(size > 0 for size in searched):  # both make a call: side by side
            held, (found, unreadable) = await asyncio.gather(exact, near)
        else:  # at most one does (a task each would cost 13 µs per lookup for nothing)
            held, (found, unreadable) = await exact, await near
        hits = [one if one is not None else other for one, other in zip(held, found, strict=True)]
        return CacheLookup(hits, vectors, tags, unreadable, self._storing(sizes, tags))

    async def _near_hits(self, queries: Sequence[Query], vectors: np.ndarray, tags: Sequence[dict[str, str] | None],
                         sizes: Sequence[int], index_size: int) -> tuple[list[RoutedAnswer | None], frozenset[int]]:
        """The hits of the queries whose partition has entries, embedding those not embedded yet (into
        ``vectors``), and those whose question could not be embedded; no call when there are none."""
        warm = [i for i, size in enumerate(sizes) if size > 0]
        if not warm:
            return [None] * len(queries), frozenset()
        blank = blank_rows(vectors)
        pending = [i for i in warm if blank[i]]
        if pending:
            vectors[pending] = await self._embed_off_loop([queries[i].question for i in pending],
                                                          [f"query {queries[i].id}" for i in pending])
            blank = blank_rows(vectors)
        policies = [hybrid_policy(size, index_size, self.config) for size in sizes]
        warm_tags = [t if size > 0 else None for t, size in zip(tags, sizes, strict=True)]
        return (await self.search(queries, vectors, warm_tags, policies, count=False),
                frozenset(i for i in warm if blank[i]))

    def _count(self, hits: Sequence[RoutedAnswer | None]) -> None:
        """Count the hits and misses of one lookup in ``stats``."""
        self.stats.hits += sum(h is not None for h in hits)
        self.stats.misses += sum(h is None for h in hits)

    def _storing(self, sizes: Sequence[int], tags: Sequence[dict[str, str] | None]) -> list[Storing]:
        """How each answer will be stored, by its partition's entries: held in a partition never asked
        (unless two queries of this lookup ask it), indexed with the held answers in one asked but with
        nothing indexed, else indexed (all of them if holding is off)."""
        if not self._holding:
            return ["index"] * len(sizes)
        asked = Counter(t["partition"] for t, size in zip(tags, sizes, strict=True)
                        if t is not None and size == NEW_PARTITION)
        return ["hold" if t is not None and size == NEW_PARTITION and asked[t["partition"]] == 1
                else "index_held" if size == 0 else "index" for t, size in zip(tags, sizes, strict=True)]

    async def _held_hits(self, queries: Sequence[Query], tags: Sequence[dict[str, str] | None],
                         sizes: Sequence[int]) -> list[RoutedAnswer | None]:
        """The held answers of the queries whose partition was asked but has nothing indexed, by their
        exact question, in one round trip (no call when there are none); misses if Redis fails."""
        hits: list[RoutedAnswer | None] = [None] * len(queries)
        if not self._holding:
            return hits
        held: list[tuple[int, str, bytes]] = []
        for i, t in enumerate(tags):
            if t is not None and sizes[i] == 0:
                try:
                    held.append((i, self.held_key(t), question_field(queries[i].question)))
                except UnicodeEncodeError:  # not a question any answer is held for
                    continue
        if not held:
            return hits

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for _, key, question in held:
                    pipe.hget(key, question)  # type: ignore[arg-type]
                return list(await pipe.execute())

        try:
            replies = await self.breaker.call(run)
        except Exception as error:
            self.stats.errors += 1
            log.warning("semantic cache: held answers unreadable, misses: %s", error)
            return hits
        for (i, _, _), reply in zip(held, replies, strict=True):
            if reply is not None:
                hits[i] = self._answer(queries[i], reply, "held, the same question")
        return hits

    async def search(self, queries: Sequence[Query], vectors: np.ndarray,
                     tags: Sequence[dict[str, str] | None] | None = None,
                     policies: Sequence[str | None] | None = None, count: bool = True) -> list[RoutedAnswer | None]:
        """Look up already-embedded questions in one pipeline round trip (``tags``: ``tags_of(queries)``,
        if the caller has them already; ``policies``: each search's ``hybrid_policy``; ``count``: in
        ``stats``)."""
        tags = self.tags_of(queries) if tags is None else tags
        misses: list[RoutedAnswer | None] = [None] * len(queries)
        blank = blank_rows(vectors)
        searchable = [(i, t) for i, t in enumerate(tags) if t is not None and not blank[i]]
        if not searchable:
            return misses

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for i, t in searchable:
                    pipe.execute_command(*search_command(
                        self.index_name, vectors[i], t["partition"], policies[i] if policies is not None else None,
                        self.config))
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
        if count:
            self._count(hits)
        return hits

    def _hit(self, query: Query, found: Sequence[Candidate]) -> RoutedAnswer | None:
        """The nearest entry within the distance threshold whose question the wording guard accepts."""
        best = next((c for c in found if c.distance <= self.config.distance_threshold and (
            not self.config.wording_guard or same_question(query.question, c.question))), None)
        return None if best is None else self._answer(query, best.answer, f"distance {best.distance:.3f}")

    @staticmethod
    def _answer(query: Query, stored: bytes, found: str) -> RoutedAnswer | None:
        """A stored answer's JSON as this query's cache hit; None (a miss) if it cannot be read."""
        try:
            answer = RoutedAnswer.model_validate_json(stored)
        except ValueError as error:
            log.warning("query %s: unreadable cache entry skipped: %s", query.id, error)
            return None
        return answer.model_copy(update={
            "request_id": query.id, "cost": 0.0, "attempts": [], "latency": [], "cache_hit": True,
            "reason": f"cache hit ({found}); originally: {answer.reason}",
        })

    def storable(self, answer: RoutedAnswer, last_tier: str) -> bool:
        """Answers of the last tier, or small-model answers confident enough; never degraded or empty ones."""
        if answer.degraded or not answer.attempts or not answer.answer.strip():
            return False
        return answer.tier == last_tier or (answer.confidence or 0.0) >= self.config.min_small_confidence

    async def store(self, queries: Sequence[Query], answers: Sequence[RoutedAnswer], vectors: np.ndarray,
                    last_tier: str, tags: Sequence[dict[str, str] | None] | None = None,
                    storing: Sequence[Storing | None] | None = None) -> int:
        """Store the storable answers in one pipeline and count them in their partitions; returns how
        many were stored. ``tags``: the lookup's entry tags per query (None where it has none: computed
        here); ``storing``: the lookup's ``CacheLookup.storing`` per query (None: "index"). An indexed
        answer's question is embedded here if the lookup did not (a row of NaN in ``vectors``); a held
        one's is not; the held answers of a partition indexed now are taken and indexed with it. An
        entry that cannot be built is logged and counted (``cascade.records.dropped``) and never stops
        the others."""
        chosen = self._chosen(queries, answers, last_tier, tags)
        if not chosen or not self.breaker.allow():  # Redis is down: no embedding for a store that cannot happen
            return 0
        try:
            await self.ensure_index()
        except Exception as error:
            return self._failed(error)
        how = {i: self._how(storing[i] if storing is not None else None) for i in chosen}
        indexed_partitions = {t["partition"] for i, t in chosen.items() if how[i] != "hold"}
        held = {i: t for i, t in chosen.items() if how[i] == "hold" and t["partition"] not in indexed_partitions}
        indexed = {i: t for i, t in chosen.items() if i not in held}
        taken = await self._take_held([t for i, t in indexed.items() if how[i] == "index_held"],
                                      {(t["partition"], queries[i].question) for i, t in indexed.items()})
        fresh: list[tuple[str, RoutedAnswer | bytes, dict[str, str]]] = [
            (queries[i].question, answers[i], t) for i, t in indexed.items()]
        known = np.asarray(vectors, np.float32)[list(indexed)] if indexed else None
        documents, markers, answered = await self._documents([*fresh, *taken], known)
        holds = self._holds({i: (queries[i].question, answers[i], t) for i, t in held.items()})
        if not documents and not holds:
            return 0
        try:
            late = await self.breaker.call(lambda: self._write(documents, markers, holds), background=True)
        except Exception as error:
            return self._failed(error)
        if late:
            try:
                await self._index_held(late)
            except Exception as error:
                self.stats.errors += 1
                log.warning("semantic cache: answers held after their partition had entries not indexed: %s", error)
        stored = answered + sum(len(hold.answers) for hold in holds.values())
        self.stats.stores += stored
        return stored

    def _how(self, storing: Storing | None) -> Storing:
        """How an answer is stored: as its lookup said ("index" if it said nothing), but indexed where the
        server cannot hold it."""
        return "index" if storing is None or (storing == "hold" and not self._holding) else storing

    def _failed(self, error: Exception) -> int:
        """Log and count a store that failed (nothing stored)."""
        self.stats.errors += 1
        self._forget_index(error)
        log.warning("semantic cache store failed, answers not cached: %s", error)
        return 0

    async def _index_held(self, holds: Sequence[Hold]) -> None:
        """Take and index the answers held in partitions that have entries already (their hold came after
        another store indexed some: no lookup reads their held hash any more)."""
        documents, markers, _ = await self._documents(await self._take_held([h.tags for h in holds], set()), None)
        if documents:
            await self.breaker.call(lambda: self._write(documents, markers, {}), background=True)

    def _chosen(self, queries: Sequence[Query], answers: Sequence[RoutedAnswer], last_tier: str,
                tags: Sequence[dict[str, str] | None] | None) -> dict[int, dict[str, str]]:
        """The storable answers, by their query's position, with their entry tags (the lookup's, or
        computed here); an answer whose tags cannot be computed is dropped and counted."""
        chosen: dict[int, dict[str, str]] = {}
        for i, answer in enumerate(answers):
            if self.storable(answer, last_tier):
                try:
                    known = tags[i] if tags is not None else None
                    chosen[i] = known if known is not None else entry_tags(queries[i], self.deployment)
                except Exception as error:
                    self._drop(answer, error)
        return chosen

    def _drop(self, answer: RoutedAnswer, error: Exception) -> None:
        """Log and count an answer whose cache entry cannot be built."""
        self.stats.errors += 1
        count_dropped("cache", answer.tenant, type(error).__name__)
        log.warning("request %s: answer not cached, its entry cannot be built: %s: %s",
                    answer.request_id, type(error).__name__, error)

    async def _documents(self, stored: Sequence[tuple[str, RoutedAnswer | bytes, dict[str, str]]],
                         known: np.ndarray | None) -> tuple[dict[str, dict[str, Any]], dict[str, int], int]:
        """The index entries of (question, answer or its JSON, tags), by key, how many each partition's
        marker gains, and how many of them are of answers (not of JSON taken from a held hash);
        ``known``: the first rows' embeddings (NaN where not computed: embedded here). An entry is left
        out if its question cannot be embedded or its entry cannot be built."""
        rows = np.full((len(stored), self.dimensions), np.nan, np.float32)
        if known is not None:
            rows[:len(known)] = known
        pending = np.flatnonzero(blank_rows(rows)).tolist()
        if pending:
            rows[pending] = await self._embed_off_loop(
                [stored[n][0] for n in pending],
                [f"request {a.request_id}" if isinstance(a, RoutedAnswer) else "a held answer"
                 for a in (stored[n][1] for n in pending)])
        blank = blank_rows(rows)
        now = time.time()
        documents: dict[str, dict[str, Any]] = {}
        markers: dict[str, int] = {}
        answered = 0
        for n, (question, answer, t) in enumerate(stored):
            if blank[n]:
                continue
            try:
                documents[self._index.key(os.urandom(16).hex())] = {
                    **t, "question": question, "created": now, "embedding": rows[n].tobytes(),
                    "answer": answer if isinstance(answer, bytes) else answer.model_dump_json()}
                markers[self.marker_key(t)] = markers.get(self.marker_key(t), 0) + 1
                answered += isinstance(answer, RoutedAnswer)
            except Exception as error:
                if isinstance(answer, RoutedAnswer):
                    self._drop(answer, error)
        return documents, markers, answered

    def _holds(self, held: dict[int, tuple[str, RoutedAnswer, dict[str, str]]]) -> dict[str, Hold]:
        """The answers to hold, per held hash: its partition's marker and the answers by question."""
        holds: dict[str, Hold] = {}
        for question, answer, t in held.values():
            try:
                hold = holds.setdefault(self.held_key(t), Hold(self.marker_key(t), t, {}))
                hold.answers[question_field(question)] = answer.model_dump_json()
            except Exception as error:
                self._drop(answer, error)
        return {key: hold for key, hold in holds.items() if hold.answers}

    async def _take_held(self, partitions: Sequence[dict[str, str]],
                         stored: set[tuple[str, str]]) -> list[tuple[str, bytes, dict[str, str]]]:
        """Take (read and delete, at once: another replica taking them too gets none) the answers held in
        these partitions (by their entry tags), at most ``PROMOTED_MAX`` each, as (question, answer JSON,
        tags), but those whose question is stored now. If Redis fails, none: they stay in the hash, read
        only while their partition has nothing indexed, until it expires; answers taken are lost if the
        store then fails (misses later). A field that is not a question (not UTF-8) is dropped and counted."""
        unique = list({t["partition"]: t for t in partitions}.values())
        if not unique:
            return []

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                for t in unique:
                    pipe.hgetall(self.held_key(t))
                    pipe.delete(self.held_key(t))
                return list(await pipe.execute())

        try:
            replies = await self.breaker.call(run, background=True)
        except Exception as error:
            self.stats.errors += 1
            log.warning("semantic cache: held answers not read, left held: %s", error)
            return []
        taken: list[tuple[str, bytes, dict[str, str]]] = []
        for t, held in zip(unique, replies[::2], strict=True):
            for held_question, answer in list((held or {}).items())[:PROMOTED_MAX]:
                try:
                    question, answer_json = reply_bytes(held_question).decode(), reply_bytes(answer)
                except (UnicodeDecodeError, TypeError):
                    self.stats.errors += 1
                    log.warning("semantic cache: an unreadable held answer dropped", exc_info=True)
                    continue
                if (t["partition"], question) not in stored:
                    taken.append((question, answer_json, t))
        return taken

    async def _write(self, entries: dict[str, dict[str, Any]], markers: dict[str, int],
                     holds: dict[str, Hold]) -> list[Hold]:
        """Write the entries (hashes the index picks up by their key prefix, as RedisVL's ``load``
        writes them) and count them in each partition's marker and in the index's, in one round trip:
        the pipeline runs in order, so a marker never announces entries that are not there yet. The
        markers live as long as the entries. A count is of entries stored while its key lived: it
        overstates a partition whose older entries expired, as much as it overstates the index.
        ``holds``: per held hash, its answers by question, and its partition's marker, set to 0 unless
        it exists; a held hash expires ``ttl_s`` after its first answer, with its marker. Returns the
        holds whose partition has entries already (SET NX GET and EXPIRE NX: Redis 7 or later)."""
        ttl = self.config.ttl_s
        counted = [*markers.items(), (self.size_key, sum(markers.values()))] if markers else []
        async with self._client.pipeline(transaction=False) as pipe:
            for key, entry in entries.items():
                pipe.hset(key, mapping=entry)
                pipe.expire(key, ttl)
            for key, stored in counted:
                pipe.incrby(key, stored)
                pipe.expire(key, ttl)
            for key, hold in holds.items():
                pipe.hset(key, mapping=hold.answers)
                pipe.expire(key, ttl, nx=True)
                pipe.set(hold.marker, 0, nx=True, ex=ttl, get=True)
            replies = await pipe.execute()
        held_from = 2 * len(entries) + 2 * len(counted)
        counts = replies[2 * len(entries):held_from:2]
        until = time.monotonic() + self.config.marker_memo_s
        self._sizes.update({key: (int(count), until) for (key, _), count in zip(counted, counts, strict=True)})
        late: list[Hold] = []
        for hold, before in zip(holds.values(), replies[held_from + 2::3], strict=True):
            if before is None or int(before) == 0:  # asked, nothing indexed
                self._sizes[hold.marker] = (0, until)
            else:
                late.append(hold)
        return late

    async def purge(self, tenant: str) -> int:
        """Forget the tenant's cached answers in every index of this configuration (``cascade/cache/purge.py``):
        returns how many went. Refused at once (``CircuitOpenError``) while the request path's circuit is open;
        each step is then a call through a breaker of its own (``PURGE_STEP_TIMEOUT_S``), so that a slow purge
        never opens the circuit every tenant's requests go through: ``RedisFaultError`` if Redis fails (what
        went before stays gone)."""
        self.breaker.check()
        purging = RedisBreaker(self.breaker.config.model_copy(update={
            "background_timeout_ms": PURGE_STEP_TIMEOUT_S * 1000}))

        def guarded(operation: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
            return purging.call(operation, background=True)

        indexes = await guarded(partial(cache_indexes, self._client, self.config.index_name))
        try:
            return await purge_tenant(self._client, indexes, tenant, guarded)
        finally:
            forgotten = marker_key(self.index_name, {"tenant": tag_value(tenant), "partition": ""})
            self._sizes = {key: size for key, size in self._sizes.items() if not key.startswith(forgotten)}

    async def close(self) -> None:
        await self._index.disconnect()
        await self._client.aclose()
