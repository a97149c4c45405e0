"""The routing core: a batch goes through the tiers, small to large, decided by vectorized policies.

``answer`` is the one entry: a batch of queries (or checkpoints of routes to resume) in, one
``Outcome`` per item out, in one of three modes — interactive (each escalated query goes on alone,
so no answer waits for another's escalation), throughput (escalations go on tier by tier as
batches) and progressive (an escalated query stops with its provisional answer and the checkpoint
that resumes it). It is made of three steps: ``begin`` looks the batch up in the cache and makes one
batched call to the first tier for the misses, deciding for the whole batch at once; ``finish`` (or
``finish_together``) takes queries the rest of the way; ``record`` stores answers in the cache and
appends the decisions to the feedback log. A server that batches across requests passes its own
batched ``begin`` and a background ``record`` to ``answer``; it never calls the steps itself.

Each query's ``routing`` controls (a tenant plan's highest tier, a forced tier, a threshold) are
honoured here, so that the server only translates plans and requests into them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel

from cascade.answers import token_f1
from cascade.cache import SemanticCache, Storing
from cascade.costs import ModelPrice, total_cost
from cascade.embeddings import embed_each
from cascade.engines.base import (
    Deadline,
    Engine,
    InvalidInputError,
    PartialGenerationError,
    PromptTooLongError,
    bounded,
    input_error,
)
from cascade.errors import public_message
from cascade.feedback import FeedbackLog, decision_record, outcome_record
from cascade.policies import CascadePolicy, Policy
from cascade.prerouter import PreRouter
from cascade.schemas import Generation, Query, RoutedAnswer, Signals, StageLatency, TierAttempt
from cascade.signals import SignalBatch, signals_of
from cascade.telemetry import Counted, Telemetry
from cascade.thresholds import LiveThresholds

log = logging.getLogger(__name__)

BACKSTOP_GRACE_S = 0.5
"""How long after a tier's ``timeout_s`` the router abandons the tier's whole batched call, where the
engine (or the hop to its pool) did not keep the deadline itself."""


ResultT = TypeVar("ResultT")


def _one_per_query(results: list[ResultT], queries: Sequence[Query]) -> list[ResultT]:
    """An engine's results, checked to be one per query."""
    if len(results) != len(queries):
        raise RuntimeError(f"engine returned {len(results)} results for {len(queries)} queries")
    return results


class AllTiersFailedError(RuntimeError):
    """No tier could answer a query."""


class UnknownTierError(ValueError):
    """A routing control names a tier the router does not have."""


class TierNotAllowedError(ValueError):
    """A query forces a tier above the highest one its plan allows."""

    def __init__(self, query_id: str, forced: str, cap: str) -> None:
        super().__init__(f"query {query_id}: this plan stops at the {cap} tier; it cannot force {forced}")
        self.query_id, self.forced, self.cap = query_id, forced, cap

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return type(self), (self.query_id, self.forced, self.cap)


@dataclass
class Tier:
    """One rung of the cascade: a model, its price and the policy judging its answers."""

    name: str
    engine: Engine
    policy: Policy
    price: ModelPrice = field(default_factory=ModelPrice)
    timeout_s: float | None = None


class BestAnswer(BaseModel):
    """The most recent answer a query got: returned if it is accepted, or as the fallback (marked
    degraded) if every later tier fails."""

    tier: str
    model: str
    text: str
    finish_reason: str
    signals: Signals
    confidence: float


class TrailCheckpoint(BaseModel):
    """Everything needed to resume a trail elsewhere (a progressive answer's job): JSON-able."""

    query: Query
    next_tier: int
    attempts: list[TierAttempt]
    latency: list[StageLatency]
    reasons: list[str]
    best: BestAnswer | None
    batch_size: int


@dataclass
class Trail:
    """Where one query is on its way through the tiers."""

    query: Query
    next_tier: int
    attempts: list[TierAttempt] = field(default_factory=list)
    latency: list[StageLatency] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    best: BestAnswer | None = None
    result: RoutedAnswer | None = None
    deferred: bool = False
    counted_attempts: int | None = None  # resumed from a checkpoint: its attempts, counted with the provisional answer
    first_text: str | None = None  # the first tier's answer, when this request got it (not a resumed route)
    batch_size: int = 1
    vector: np.ndarray | None = None  # the question's cache embedding (NaN: not computed yet); None: never cached
    cache_tags: dict[str, str] | None = None  # its cache entry tags, from the lookup
    cache_storing: Storing | None = None  # how the cache stores its answer, from the lookup
    capped: bool = False  # its answer was kept by its plan's highest tier against the policy: never cached
    rejected: Exception | None = None
    started_ns: int = field(default_factory=time.time_ns)
    links: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def resumed(self) -> bool:
        """Taken on from a checkpoint (a progressive answer's job)."""
        return self.counted_attempts is not None

    @property
    def deferrable(self) -> bool:
        """Answered by some tier, escalated, not finished: what a progressive answer defers, unless the
        answer so far is empty (nothing to show: that route finishes in the request)."""
        return (self.result is None and self.best is not None and self.rejected is None
                and bool(self.best.text.strip()))

    def checkpoint(self) -> TrailCheckpoint:
        """The trail as it stands, to be resumed by ``Router.resume``."""
        return TrailCheckpoint(query=self.query, next_tier=self.next_tier, attempts=self.attempts,
                               latency=self.latency, reasons=self.reasons, best=self.best, batch_size=self.batch_size)


Mode = Literal["interactive", "throughput", "progressive"]


@dataclass(frozen=True)
class Scored:
    """A tier's answers to a batch, scored (``Router._score``): one row or entry per answer."""

    signals: SignalBatch
    confidence: np.ndarray
    escalate: np.ndarray
    empty: np.ndarray
    costs: np.ndarray
    reasons: list[str]
    scoring_ms: float
    capped: np.ndarray  # answers kept by the query's plan (its highest tier) that the policy would have escalated


@dataclass(frozen=True)
class Outcome:
    """One item's result from ``Router.answer``: its answer or the error that stopped it. In
    progressive mode an escalated query's answer is provisional and ``rest`` resumes its route."""

    answer: RoutedAnswer | None = None
    error: Exception | None = None
    rest: TrailCheckpoint | None = None


class Router:
    """Routes batches of queries through ``tiers`` (ordered small to large)."""

    def __init__(self, tiers: Sequence[Tier], *, cache: SemanticCache | None = None,
                 feedback: FeedbackLog | None = None, thresholds: LiveThresholds | None = None,
                 shadow_fraction: float = 0.0, seed: int = 0, telemetry: Telemetry | None = None,
                 prerouter: PreRouter | None = None) -> None:
        if not tiers:
            raise ValueError("a router needs at least one tier")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        self.tiers = list(tiers)
        self._index = {name: i for i, name in enumerate(names)}
        self.cascade = CascadePolicy([t.policy for t in tiers])
        self.cache = cache
        self.feedback = feedback
        self.thresholds = thresholds
        self.prerouter = prerouter
        self.telemetry = telemetry or Telemetry()
        if not 0.0 <= shadow_fraction <= 1.0:
            raise ValueError(f"shadow_fraction must be within [0, 1], got {shadow_fraction}")
        self.shadow_fraction = shadow_fraction
        self._rng = np.random.default_rng(seed)
        self._shadows: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Load every tier's engine."""
        for tier in self.tiers:
            await tier.engine.start()

    async def close(self) -> None:
        """Release every tier's engine and the Redis clients (flushing buffered feedback first)."""
        await self.drain()
        for tier in self.tiers:
            await tier.engine.close()
        for client in (self.cache, self.feedback, self.thresholds):
            if client is not None:
                await client.close()

    def tier_index(self, name: str) -> int:
        """Position of the tier called ``name``."""
        try:
            return self._index[name]
        except KeyError:
            raise UnknownTierError(f"unknown tier {name!r}; tiers are {list(self._index)}") from None

    def check_controls(self, query: Query) -> None:
        """Raise ``UnknownTierError`` if the query's routing controls name a tier that does not exist,
        ``TierNotAllowedError`` if it forces a tier above its plan's highest."""
        for name in (query.routing.force_tier, query.routing.max_tier):
            if name is not None:
                self.tier_index(name)
        forced, cap = query.routing.force_tier, query.routing.max_tier
        if forced is not None and cap is not None and self.tier_index(forced) > self.tier_index(cap):
            raise TierNotAllowedError(query.id, forced, cap)

    async def route(self, queries: Sequence[Query]) -> list[RoutedAnswer]:
        """Answer a batch interactively, raising the first query's error if any failed."""
        outcomes = await self.answer(queries)
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
        return [o.answer for o in outcomes if o.answer is not None]

    async def answer(self, items: Sequence[Query | TrailCheckpoint], mode: Mode = "interactive", *,
                     begin: Callable[[list[Query]], Awaitable[list[Trail]]] | None = None,
                     record: Callable[[list[Trail]], None] | None = None,
                     trace_parent: Any = None) -> list[Outcome]:
        """Answer a batch: queries from the start, checkpoints from where their route stopped.

        ``begin`` replaces the router's own first pass (a server's batch across requests); ``record``
        takes the finished trails off the caller's path instead of awaiting ``self.record``."""
        trails: list[Trail | None] = [None] * len(items)
        fresh = [i for i, item in enumerate(items) if isinstance(item, Query)]
        begun = await (begin or self.begin)([q for q in items if isinstance(q, Query)]) if fresh else []
        for i, trail in zip(fresh, begun, strict=True):
            trails[i] = trail
        for i, item in enumerate(items):
            if isinstance(item, TrailCheckpoint):
                trails[i] = self._resumed(item)
        ready = [t for t in trails if t is not None]
        rests: dict[int, TrailCheckpoint] = {}
        if mode == "progressive":
            for trail in ready:
                if trail.deferrable:
                    rests[id(trail)] = self.defer(trail)[1]
        results = await (self.finish_together(ready) if mode == "throughput" else self._finish_each(ready))
        outcomes = [Outcome(answer=r, rest=rests.get(id(t))) if isinstance(r, RoutedAnswer) else Outcome(error=r)
                    for t, r in zip(ready, results, strict=True)]
        answered = [(t, o.answer) for t, o in zip(ready, outcomes, strict=True) if o.answer is not None]
        stages: list[tuple[str, float]] = []
        if record is not None:
            record([t for t, _ in answered])
        else:
            recording = time.perf_counter()
            await self.record([t for t, _ in answered])
            stages = [("feedback", (time.perf_counter() - recording) * 1000)]
        for trail, answer in answered:
            self.telemetry.trace_answer(answer, trail.started_ns, trail.links, parent=trace_parent,
                                        extra_stages=stages, provisional=trail.deferred, resumed=trail.resumed)
        self.telemetry.record_answers([Counted(a, provisional=t.deferred, counted_attempts=t.counted_attempts or 0)
                                       for t, a in answered])
        return outcomes

    def _resumed(self, checkpoint: TrailCheckpoint) -> Trail:
        """``resume``, with a checkpoint the router refuses (a control it no longer allows) as a
        rejected trail rather than an error for the whole batch."""
        try:
            return self.resume(checkpoint)
        except ValueError as error:
            return Trail(checkpoint.query, len(self.tiers), rejected=error)

    async def begin(self, queries: Sequence[Query]) -> list[Trail]:
        """Cache lookup for the batch, then one first-tier call for the misses; hits come back done.
        A query forcing a tier is never answered from the cache (its answer is still stored).

        Never raises for the batch: if it fails, its halves are tried apart until the queries that
        fail are alone, and each of those comes back with the error in ``rejected``."""
        try:
            return await self._begin(queries)
        except Exception as error:
            if len(queries) == 1:
                log.warning("query %s rejected: %s", queries[0].id, error, exc_info=not isinstance(error, ValueError))
                return [Trail(queries[0], len(self.tiers), rejected=error)]
            log.warning("a batch of %d queries failed (%s); routing its halves apart", len(queries),
                        type(error).__name__)
        half = len(queries) // 2
        left, right = await asyncio.gather(self.begin(queries[:half]), self.begin(queries[half:]))
        return [*left, *right]

    async def _begin(self, queries: Sequence[Query]) -> list[Trail]:
        refused: dict[int, Exception] = {}
        for i, query in enumerate(queries):
            try:
                self.check_controls(query)
            except (UnknownTierError, TierNotAllowedError) as error:  # that query alone: its batch goes on whole
                refused[i] = error
        if not refused:
            return await self._begin_checked(queries)
        rest = [q for i, q in enumerate(queries) if i not in refused]
        kept = iter(await self._begin_checked(rest) if rest else [])
        return [Trail(q, len(self.tiers), rejected=refused[i]) if i in refused else next(kept)
                for i, q in enumerate(queries)]

    async def _begin_checked(self, queries: Sequence[Query]) -> list[Trail]:
        """``_begin`` for queries whose routing controls passed ``check_controls``."""
        started_ns, looking = time.time_ns(), time.perf_counter()
        starts, shared = await self._preroute(queries)
        asking = [query.routing.force_tier is None for query in queries]  # a forced tier answers its query
        lookup = (await self.cache.lookup(queries, shared, self._serves, asking)
                  if self.cache is not None and queries else None)
        if lookup is None:
            return await self.first_pass(queries, starts=starts)
        cache_stage = StageLatency(stage="cache", ms=(time.perf_counter() - looking) * 1000)
        hits = lookup.hits
        misses = [i for i, hit in enumerate(hits) if hit is None]
        passed = iter(await self.first_pass([queries[i] for i in misses], batch_size=len(queries),
                                            stages=[cache_stage], starts=[starts[i] for i in misses]))
        trails: list[Trail] = []
        for i, (query, hit) in enumerate(zip(queries, hits, strict=True)):
            if hit is None:
                trail = next(passed)
                trail.vector, trail.cache_tags = lookup.vector(i), lookup.tags[i]
                trail.cache_storing = None if lookup.storing is None else lookup.storing[i]
            else:
                trail = Trail(query, len(self.tiers), result=hit.model_copy(
                    update={"batch_size": len(queries), "latency": [cache_stage]}))
            trail.started_ns = started_ns
            trails.append(trail)
        return trails

    def _serves(self, query: Query, hit: RoutedAnswer) -> bool:
        """Whether a cached answer may answer this query (one that forces a tier is not looked up): for one
        that sets its own threshold, only a last-tier answer or one at least that confident."""
        threshold = query.routing.threshold
        return threshold is None or hit.tier == self.tiers[-1].name or (
            hit.confidence is not None and hit.confidence >= threshold)

    def _cacheable(self, trail: Trail) -> bool:
        """Whether a finished trail's answer may serve others: a fresh, final one the policy accepted (not
        one its plan's highest tier kept from an escalation), and for a query that forced a tier or set its
        own threshold, only a last-tier answer (which any query accepts)."""
        if trail.vector is None or trail.deferred or trail.result is None or trail.capped:
            return False
        controls = trail.query.routing
        return (controls.force_tier is None and controls.threshold is None) or trail.result.tier == self.tiers[-1].name

    async def _preroute(self, queries: Sequence[Query]) -> tuple[list[int], np.ndarray | None]:
        """Each query's start tier by the pre-router (0 without one), and the embeddings the cache can
        reuse (rows of NaN where it cannot: another embedder, or a question the pre-router stripped)."""
        if self.prerouter is None or not queries:
            return [0] * len(queries), None
        questions = [q.question for q in queries]
        texts = self.prerouter.texts(questions)
        embedder = self.prerouter.embedder
        labels, consequence = [f"query {q.id}" for q in queries], "it starts at the first tier"
        if embedder.cheap:
            vectors, _ = embed_each(embedder, texts, labels, consequence)
        else:
            vectors, _ = await asyncio.to_thread(embed_each, embedder, texts, labels, consequence)
        starts = self.prerouter.starts(vectors, [q.id for q in queries])
        if self.cache is None or self.cache.embedder_name != self.prerouter.embedder.name:
            return starts, None
        same = np.array([t == q for t, q in zip(texts, questions, strict=True)], bool)
        return starts, np.where(same[:, None], vectors, np.nan).astype(np.float32)

    async def record(self, trails: Sequence[Trail]) -> None:
        """One cache store for the fresh answers and one feedback append for all finished trails (a
        deferred one's record marked provisional, a resumed one's resumed; shadow checks only for final
        answers). Never raises: a record that cannot be stored is logged and counted alone (see the
        cache and the feedback log); an unexpected fault is logged with the request ids it concerned."""
        done = [t for t in trails if t.result is not None]
        fresh = [t for t in done if self._cacheable(t)]
        try:
            if self.cache is not None and fresh:
                await self.cache.store([t.query for t in fresh], [t.result for t in fresh if t.result is not None],
                                       np.stack([t.vector for t in fresh if t.vector is not None]),
                                       self.tiers[-1].name, [t.cache_tags for t in fresh],
                                       [t.cache_storing for t in fresh])
        except Exception:
            log.exception("cache store failed for requests %s", [t.query.id for t in fresh])
        try:
            if self.feedback is not None and done:
                await self.feedback.append([decision_record(t.result, provisional=t.deferred, resumed=t.resumed,
                                                            first_text=t.first_text)
                                            for t in done if t.result is not None])
                final = [t for t in done if not t.deferred]  # a provisional answer is being escalated already
                self._start_shadow_checks([t.query for t in final], [t.result for t in final if t.result is not None])
        except Exception:
            log.exception("feedback append failed for requests %s", [t.query.id for t in done])

    def _start_shadow_checks(self, queries: Sequence[Query], answers: Sequence[RoutedAnswer]) -> None:
        """Send a random share of accepted first-tier answers to the last tier, off the request path."""
        if self.shadow_fraction <= 0 or len(self.tiers) < 2:
            return
        first = self.tiers[0].name
        accepted = np.array([a.tier == first and len(a.attempts) == 1 for a in answers], bool)
        chosen = np.flatnonzero(accepted & (self._rng.random(len(answers)) < self.shadow_fraction))
        if chosen.size:
            task = asyncio.create_task(self._shadow([queries[i] for i in chosen], [answers[i] for i in chosen]))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    async def _shadow(self, queries: list[Query], answers: list[RoutedAnswer]) -> None:
        """Agreement (token F1) between the small answer and the large model's is an implicit label."""
        assert self.feedback is not None
        results: Sequence[Generation | Exception]
        try:
            results = await self._generate(self.tiers[-1], queries)
        except PartialGenerationError as partial:  # the answers that came back are labels all the same
            log.warning("shadow check failed for some answers: %s", partial)
            results = partial.results  # as many as the queries: _generate checks
        except Exception as error:
            log.warning("shadow check failed for %d answers: %s", len(queries), error)
            return
        await self.feedback.append([
            outcome_record(a.request_id, a.tenant, score=token_f1(a.answer, [g.text]), source="shadow")
            for a, g in zip(answers, results, strict=True) if isinstance(g, Generation)])

    async def drain(self) -> None:
        """Wait for the shadow checks under way."""
        if self._shadows:
            await asyncio.gather(*self._shadows)

    async def first_pass(self, queries: Sequence[Query], start_tier: int = 0, batch_size: int | None = None,
                         stages: Sequence[StageLatency] = (), starts: Sequence[int] | None = None) -> list[Trail]:
        """One batched call to ``start_tier`` (or to each query's pre-routed tier in ``starts``, or its
        forced tier); accepted trails are done, the rest await ``finish``."""
        size = batch_size or len(queries)
        begins = starts if starts is not None else [start_tier] * len(queries)
        trails = [Trail(q, self._start_of(q, begin), batch_size=size, latency=list(stages))
                  for q, begin in zip(queries, begins, strict=True)]
        for trail in trails if starts is not None else []:
            if trail.next_tier > 0 and trail.query.routing.force_tier is None:
                trail.reasons.append(f"pre-routed to the {self.tiers[trail.next_tier].name} tier")
        if self.thresholds is not None:
            await self.thresholds.refresh()
            self.telemetry.record_thresholds(self.thresholds.values)
        await self._run_by_tier(trails)
        return trails

    async def _run_by_tier(self, trails: Sequence[Trail]) -> None:
        """One batched call per tier that some of ``trails`` are due at, concurrently."""
        groups: dict[int, list[Trail]] = {}
        for trail in trails:
            groups.setdefault(trail.next_tier, []).append(trail)
        if len(groups) == 1:
            [(index, group)] = groups.items()
            await self._run_tier(group, index)
        else:
            await asyncio.gather(*(self._run_tier(group, index) for index, group in groups.items()))

    def provisional(self, trail: Trail) -> RoutedAnswer:
        """The answer an unfinished trail has so far, for progressive answers (the final one follows)."""
        if trail.best is None:
            raise AllTiersFailedError(f"query {trail.query.id} has no answer yet")
        answer = self._answer(trail, degraded=False)
        return answer.model_copy(update={"reason": answer.reason + " → provisional: the next tier's answer follows"})

    def defer(self, trail: Trail) -> tuple[RoutedAnswer, TrailCheckpoint]:
        """Progressive answers: end an escalated trail here with its provisional answer, and hand back
        the checkpoint from which ``resume`` + ``finish`` produce the final one (every tier's attempt
        and cost included). A deferred answer goes to the feedback log but not to the cache."""
        provisional = self.provisional(trail)
        checkpoint = trail.checkpoint()
        trail.result, trail.deferred = provisional, True
        return provisional, checkpoint

    def resume(self, checkpoint: TrailCheckpoint) -> Trail:
        """The trail a checkpoint describes, ready for ``finish``; its route goes on where it stopped."""
        self.check_controls(checkpoint.query)
        return Trail(checkpoint.query, checkpoint.next_tier, attempts=list(checkpoint.attempts),
                     latency=list(checkpoint.latency), reasons=list(checkpoint.reasons), best=checkpoint.best,
                     batch_size=checkpoint.batch_size, counted_attempts=len(checkpoint.attempts))

    def _start_of(self, query: Query, start_tier: int) -> int:
        """The forced tier, else ``start_tier`` held at the plan's highest tier."""
        forced, cap = query.routing.force_tier, query.routing.max_tier
        if forced is not None:
            return self.tier_index(forced)
        return start_tier if cap is None else min(start_tier, self.tier_index(cap))

    async def finish(self, trail: Trail) -> RoutedAnswer:
        """Take one trail through the remaining tiers until a tier accepts its answer."""
        while trail.result is None:
            if trail.rejected is not None:
                raise trail.rejected
            if trail.next_tier >= len(self.tiers):
                trail.result = self._fallback(trail)
                break
            await self._run_tier([trail], trail.next_tier)
        return trail.result

    async def _finish_each(self, trails: Sequence[Trail]) -> list[RoutedAnswer | Exception]:
        """``finish`` for each trail, concurrently; each trail's answer or the error that stopped it.
        Trails already done, and the only one still going, are finished in turn: no task each."""
        going = [t for t in trails if t.result is None and t.rejected is None]
        finished: list[RoutedAnswer | Exception] = []
        if len(going) > 1:
            for result in await asyncio.gather(*(self.finish(t) for t in trails), return_exceptions=True):
                if not isinstance(result, (RoutedAnswer, Exception)):
                    raise result  # cancellation and exit reach the caller
                finished.append(result)
            return finished
        for trail in trails:
            try:
                finished.append(await self.finish(trail))
            except Exception as error:
                finished.append(error)
        return finished

    async def finish_together(self, trails: Sequence[Trail]) -> list[RoutedAnswer | Exception]:
        """Throughput mode (batch jobs): escalated trails go on tier by tier as batches, one call per
        tier for all of them; returns each trail's answer or the error that stopped it."""
        failed: dict[int, Exception] = {}
        pending = [t for t in trails if t.result is None and t.rejected is None]
        while pending:
            for trail in [t for t in pending if t.next_tier >= len(self.tiers)]:
                try:
                    trail.result = self._fallback(trail)
                except AllTiersFailedError as error:
                    failed[id(trail)] = error
            pending = [t for t in pending if t.result is None and id(t) not in failed]
            await self._run_by_tier(pending)
            pending = [t for t in pending if t.result is None and t.rejected is None and id(t) not in failed]
        return [t.result if t.result is not None else t.rejected or failed[id(t)] for t in trails]

    async def _run_tier(self, trails: list[Trail], index: int) -> None:
        tier = self.tiers[index]
        started = time.perf_counter()
        generations: list[Generation] = []
        partial: PartialGenerationError | None = None
        try:
            with self.telemetry.tier_call(tier.name, tier.engine.model, len(trails)) as span:
                for trail in trails:
                    trail.links[f"tier:{tier.name}"] = span.get_span_context()
                try:
                    generations = await self._generate(tier, [t.query for t in trails])
                except PartialGenerationError as failed_alone:  # each query answered or failed on its own
                    partial = failed_alone
                    span.set_attribute("cascade.failed_queries",
                                       sum(isinstance(r, Exception) for r in failed_alone.results))
        except Exception as error:
            if input_error(error):  # one query's content: reject it alone, answer its batch-mates
                await self._isolate(trails, index, error)
                return
            log.warning("tier %s failed for %d queries %s: %r", tier.name, len(trails),
                        [t.query.id for t in trails], error)
            self._tier_failed(trails, index, error, (time.perf_counter() - started) * 1000)
            return
        generated_ms = (time.perf_counter() - started) * 1000
        if partial is not None:
            self._settle_each(trails, index, partial.results, generated_ms)
        else:
            self._decide(trails, index, generations, generated_ms)

    def _tier_failed(self, trails: list[Trail], index: int, error: Exception, elapsed_ms: float) -> None:
        """The tier could not answer these queries: each goes on to the next tier (a failing pool
        degrades service, it never drops the request); the caller logs the error."""
        tier = self.tiers[index]
        message = public_message(error)
        for trail in trails:
            trail.latency.append(StageLatency(stage=f"tier:{tier.name}", ms=elapsed_ms))
            trail.attempts.append(TierAttempt(tier=tier.name, model=tier.engine.model, decision=None,
                                              confidence=None, prompt_tokens=0, completion_tokens=0,
                                              cost=0.0, error=message))
            trail.reasons.append(f"{tier.name} tier failed ({message})")
            trail.next_tier = index + 1

    def _settle_each(self, trails: list[Trail], index: int, results: Sequence[Generation | Exception],
                     generated_ms: float) -> None:
        """Each query's generation or the error that stopped it alone (``PartialGenerationError``): the
        answers are decided together, a query the model cannot read is rejected alone, and any other
        failure sends only its own query on to the next tier, with its own error."""
        answered: list[tuple[Trail, Generation]] = []
        failed: list[tuple[Trail, Exception]] = []
        for trail, result in zip(trails, results, strict=True):
            if isinstance(result, Generation):
                answered.append((trail, result))
            elif input_error(result):
                self._reject(trail, index, result)
            else:
                failed.append((trail, result))
        if failed:
            log.warning("tier %s failed for %d of %d queries %s: first %r", self.tiers[index].name, len(failed),
                        len(trails), [t.query.id for t, _ in failed], failed[0][1])
        for trail, error in failed:
            self._tier_failed([trail], index, error, generated_ms)
        if answered:
            self._decide([t for t, _ in answered], index, [g for _, g in answered], generated_ms)

    def _reject(self, trail: Trail, index: int, error: Exception) -> None:
        """The tier's model cannot read this query's input: it stops here with that error."""
        log.warning("query %s rejected by tier %s: %s", trail.query.id, self.tiers[index].name, error)
        trail.rejected = error if isinstance(error, (PromptTooLongError, InvalidInputError)) else (
            InvalidInputError(trail.query.id, f"the {self.tiers[index].name} model cannot read this input "
                                              f"({type(error).__name__})"))

    async def _isolate(self, trails: list[Trail], index: int, error: Exception) -> None:
        """A tier refused a batch because of some query's input: reject the query the error names (or
        the only one), else run the batch's halves apart until the culprits are alone."""
        named = [t for t in trails if t.query.id == getattr(error, "query_id", None)]
        if named or len(trails) == 1:
            self._reject((named or trails)[0], index, error)
            rest = [t for t in trails if t.rejected is None]
            if rest:
                await self._run_tier(rest, index)
            return
        half = len(trails) // 2
        await asyncio.gather(self._run_tier(trails[:half], index), self._run_tier(trails[half:], index))

    async def _generate(self, tier: Tier, queries: list[Query]) -> list[Generation]:
        """The tier's generations, in order; ``PartialGenerationError`` (of as many results as queries)
        where some queries failed alone, late ones included (the engine keeps the deadline)."""
        deadline = Deadline.after(tier.timeout_s)
        backstop = None if deadline is None else deadline.later(BACKSTOP_GRACE_S)
        try:  # bounded on this task: no task per call, as wait_for makes
            generations = await bounded(tier.engine.generate(queries, deadline), backstop, tier.engine.model)
        except PartialGenerationError as partial:
            _one_per_query(partial.results, queries)
            raise
        return _one_per_query(generations, queries)

    def _decide(self, trails: list[Trail], index: int, generations: list[Generation], generated_ms: float) -> None:
        """Score the tier's answers together and settle each trail; if scoring the batch fails, each
        answer is scored alone: one that cannot be (a NaN confidence, a policy failing on it) goes on to
        the next tier with its error, and its batch-mates keep their answers, never generated again."""
        try:
            scored = self._score(trails, index, generations, generated_ms / 1000)
        except Exception:
            log.warning("tier %s: scoring a batch of %d answers failed; scoring each alone", self.tiers[index].name,
                        len(trails), exc_info=True)
            share_s = generated_ms / 1000 / len(trails)  # each answer's share of the tier call's time
            for trail, generation in zip(trails, generations, strict=True):
                self._decide_alone(trail, index, generation, generated_ms, share_s)
            return
        self._settle(trails, index, generations, generated_ms, scored)

    def _decide_alone(self, trail: Trail, index: int, generation: Generation, generated_ms: float,
                      share_s: float) -> None:
        """``_decide`` for one answer of a batch whose scoring failed (``share_s``: its share of the call)."""
        try:
            scored = self._score([trail], index, [generation], share_s)
        except Exception as error:
            log.warning("tier %s: the answer to query %s cannot be scored: %s", self.tiers[index].name,
                        trail.query.id, public_message(error))
            self._unscored(trail, index, generation, generated_ms, share_s, error)
            return
        self._settle([trail], index, [generation], generated_ms, scored)

    def _unscored(self, trail: Trail, index: int, generation: Generation, generated_ms: float, share_s: float,
                  error: Exception) -> None:
        """The tier answered, but its answer cannot be scored: the query goes on to the next tier, the
        attempt recorded with the answer's tokens and cost (it was paid for) and the error."""
        tier = self.tiers[index]
        message = public_message(error)
        try:
            cost = float(tier.price.cost_of([generation], call_seconds=share_s)[0])
        except Exception:  # the pricing may be what failed
            cost = 0.0
        trail.latency.append(StageLatency(stage=f"tier:{tier.name}", ms=generated_ms))
        trail.attempts.append(TierAttempt(tier=tier.name, model=generation.model, decision=None, confidence=None,
                                          prompt_tokens=generation.prompt_tokens,
                                          completion_tokens=generation.completion_tokens, cost=cost, error=message))
        trail.reasons.append(f"{tier.name} tier's answer cannot be scored ({message})")
        trail.next_tier = index + 1

    def _score(self, trails: list[Trail], index: int, generations: list[Generation], call_seconds: float) -> Scored:
        """The answers' signals, confidences, decisions, each answer's reason and cost (``call_seconds``:
        the tier call's time these answers share); changes no trail."""
        scoring_started = time.perf_counter()
        signals = signals_of(generations, [t.query for t in trails])
        decision = self.cascade.decide(index, signals)
        if np.isnan(decision.confidence).any():  # below no threshold: it would be accepted unescalated
            raise ValueError("confidence is NaN (log-probabilities holding NaN: the model's numerics failed)")
        empty = np.fromiter((not g.text.strip() for g in generations), bool, len(generations))
        confidence = np.where(empty, 0.0, decision.confidence)  # no token to be sure of
        escalate, live = self._live_decision(trails, index, confidence, decision.escalate)
        escalate, capped, held = self._controlled(trails, index, confidence, escalate, empty)
        costs = self.tiers[index].price.cost_of(generations, call_seconds=call_seconds)
        reasons = [self._explain(index, signals, i, bool(escalate[i]), live[i], held[i]) for i in range(len(trails))]
        return Scored(signals, confidence, escalate, empty, costs, reasons,
                      (time.perf_counter() - scoring_started) * 1000, capped)

    def _settle(self, trails: list[Trail], index: int, generations: list[Generation], generated_ms: float,
                scored: Scored) -> None:
        """Record each trail's attempt at this tier and accept, keep or escalate its answer as scored."""
        tier = self.tiers[index]
        for i, (trail, generation) in enumerate(zip(trails, generations, strict=True)):
            answer_confidence = float(scored.confidence[i])
            trail.latency.append(StageLatency(stage=f"tier:{tier.name}", ms=generated_ms))
            trail.latency.append(StageLatency(stage=f"score:{tier.name}", ms=scored.scoring_ms))
            trail.attempts.append(TierAttempt(
                tier=tier.name, model=generation.model, decision="escalate" if scored.escalate[i] else "accept",
                confidence=answer_confidence, prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens, cost=float(scored.costs[i])))
            trail.reasons.append(scored.reasons[i])
            trail.capped = trail.capped or bool(scored.capped[i])
            if len(trail.attempts) == 1 and trail.counted_attempts is None:
                trail.first_text = generation.text
            kept = scored.empty[i] and trail.best is not None and bool(trail.best.text.strip())
            if not kept:  # an empty answer never replaces an earlier tier's answer
                trail.best = BestAnswer(tier=tier.name, model=generation.model, text=generation.text,
                                        finish_reason=generation.finish_reason, signals=scored.signals.row(i),
                                        confidence=answer_confidence)
            if scored.escalate[i]:
                trail.next_tier = index + 1
            elif kept:
                trail.result = self._fallback(trail)
            else:
                trail.result = self._answer(trail, degraded=False)

    def _live_decision(self, trails: list[Trail], index: int, confidence: np.ndarray,
                       escalate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where a live threshold is set for (tenant, tier), escalate when confidence is below it."""
        live = np.full(len(trails), np.nan)
        if self.thresholds is None or not self.thresholds.values or index == len(self.tiers) - 1:
            return escalate, live
        live = self.thresholds.for_tier([t.query.tenant for t in trails], self.tiers[index].name)
        controlled = ~np.isnan(live)
        return np.where(controlled, confidence < np.where(controlled, live, 0.0), escalate), live

    def _controlled(self, trails: list[Trail], index: int, confidence: np.ndarray, escalate: np.ndarray,
                    empty: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Apply each query's routing controls: a threshold replaces the decision below the last tier; an
        empty answer is escalated below the last tier, whatever a threshold says; a forced tier or a plan's
        highest tier holds the answer where it is. Returns the decisions, which answers the plan's highest
        tier held against an escalation, and, per query, the reason a control or an empty answer decided it
        (None where the policy did)."""
        controls = [t.query.routing for t in trails]
        below_last = index < len(self.tiers) - 1
        if not empty.any() and all(c.threshold is None and c.force_tier is None and c.max_tier is None
                                   for c in controls):
            return escalate, np.zeros(len(trails), bool), [None] * len(trails)
        threshold = np.array([np.nan if c.threshold is None else c.threshold for c in controls])
        has_threshold = ~np.isnan(threshold) & below_last
        escalate = np.where(has_threshold, confidence < np.where(has_threshold, threshold, 0.0), escalate)
        escalate = escalate | (empty & below_last)
        forced = np.array([c.force_tier is not None for c in controls], bool)
        capped = np.array([c.max_tier is not None and self.tier_index(c.max_tier) <= index for c in controls], bool)
        tier = self.tiers[index].name
        held: list[str | None] = [
            f"accepted: forced to the {tier} tier by the request{', its answer empty' if m else ''}" if f
            else f"accepted: {tier} is the highest tier this query's plan allows{', its answer empty' if m else ''}"
            if c and e
            else f"{'escalated' if e else 'accepted'}: the {tier} tier's answer is empty" if m
            else f"{'escalated' if e else 'accepted'}: confidence {conf:.3f} {'<' if e else '>='} the query's "
                 f"threshold {t:.3f}" if h else None
            for f, c, e, m, h, conf, t in zip(forced, capped, escalate, empty, has_threshold, confidence, threshold,
                                              strict=True)]
        return escalate & ~forced & ~capped, escalate & capped & ~forced, held

    def _explain(self, index: int, signals: SignalBatch, i: int, escalate: bool, live: float,
                 held: str | None) -> str:
        if held is not None:
            return held
        if np.isnan(live):
            return self.cascade.explain(index, signals, i, escalate)
        verb, relation = ("escalated", "<") if escalate else ("accepted", ">=")
        return f"{verb}: confidence {relation} live threshold {live:.3f} for {self.tiers[index].name}"

    def _fallback(self, trail: Trail) -> RoutedAnswer:
        if trail.best is None:
            raise AllTiersFailedError("every tier failed: " + "; ".join(trail.reasons))
        trail.reasons.append(f"returning the {trail.best.tier} tier's answer, marked degraded")
        return self._answer(trail, degraded=True)

    @staticmethod
    def _answer(trail: Trail, degraded: bool) -> RoutedAnswer:
        best = trail.best
        assert best is not None
        return RoutedAnswer(
            request_id=trail.query.id,
            tenant=trail.query.tenant,
            answer=best.text,
            tier=best.tier,
            model=best.model,
            confidence=best.confidence,
            signals=best.signals,
            reason=" → ".join(trail.reasons),
            cost=total_cost(trail.attempts),
            degraded=degraded,
            batch_size=trail.batch_size,
            finish_reason=best.finish_reason,
            prompt_tokens=sum(a.prompt_tokens for a in trail.attempts),
            completion_tokens=sum(a.completion_tokens for a in trail.attempts),
            attempts=trail.attempts,
            latency=trail.latency,
        )

