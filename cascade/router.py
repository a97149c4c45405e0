"""The routing core: a batch goes through the tiers, small to large, decided by vectorized policies.

``first_pass`` makes one batched call to the first tier and decides for the whole batch at once;
``finish`` takes one query the rest of the way. A server returns accepted answers straight after
``first_pass`` and lets each escalated request await its own ``finish``, so no answer waits for
another request's escalation. ``route`` composes the two for in-process use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cascade.costs import ModelPrice, total_cost
from cascade.engines.base import Engine, PromptTooLongError
from cascade.policies import CascadePolicy, Policy
from cascade.schemas import Generation, Query, RoutedAnswer, Signals, StageLatency, TierAttempt
from cascade.signals import signals_of

log = logging.getLogger(__name__)


class AllTiersFailedError(RuntimeError):
    """No tier could answer a query."""


@dataclass
class Tier:
    """One rung of the cascade: a model, its price and the policy judging its answers."""

    name: str
    engine: Engine
    policy: Policy
    price: ModelPrice = field(default_factory=ModelPrice)
    timeout_s: float | None = None


@dataclass
class _Answered:
    """The most recent answer a query got, kept as the fallback if later tiers fail."""

    tier: Tier
    generation: Generation
    signals: Signals
    confidence: float


@dataclass
class Trail:
    """Where one query is on its way through the tiers."""

    query: Query
    next_tier: int
    attempts: list[TierAttempt] = field(default_factory=list)
    latency: list[StageLatency] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    best: _Answered | None = None
    result: RoutedAnswer | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


class Router:
    """Routes batches of queries through ``tiers`` (ordered small to large)."""

    def __init__(self, tiers: Sequence[Tier]) -> None:
        if not tiers:
            raise ValueError("a router needs at least one tier")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        self.tiers = list(tiers)
        self.cascade = CascadePolicy([t.policy for t in tiers])

    async def start(self) -> None:
        """Load every tier's engine."""
        for tier in self.tiers:
            await tier.engine.start()

    async def close(self) -> None:
        """Release every tier's engine."""
        for tier in self.tiers:
            await tier.engine.close()

    async def route(self, queries: Sequence[Query]) -> list[RoutedAnswer]:
        """Answer a batch: first tier batched, escalations concurrently, one answer per query."""
        trails = await self.first_pass(queries)
        return list(await asyncio.gather(*(self.finish(t) for t in trails)))

    async def first_pass(self, queries: Sequence[Query], start_tier: int = 0) -> list[Trail]:
        """One batched call to ``start_tier``; accepted trails are done, the rest await ``finish``."""
        trails = [Trail(q, start_tier) for q in queries]
        if trails:
            await self._run_tier(trails, start_tier)
        return trails

    async def finish(self, trail: Trail) -> RoutedAnswer:
        """Take one trail through the remaining tiers until a tier accepts its answer."""
        while trail.result is None:
            if trail.next_tier >= len(self.tiers):
                trail.result = self._fallback(trail)
                break
            await self._run_tier([trail], trail.next_tier)
        return trail.result

    async def _run_tier(self, trails: list[Trail], index: int) -> None:
        tier = self.tiers[index]
        started = time.perf_counter()
        try:
            generations = await self._generate(tier, [t.query for t in trails])
        except PromptTooLongError:
            raise
        except Exception as error:  # a failing pool degrades service, it never drops the request
            log.warning("tier %s failed for %d queries: %s", tier.name, len(trails), error)
            elapsed = (time.perf_counter() - started) * 1000
            for trail in trails:
                trail.latency.append(StageLatency(stage=f"tier:{tier.name}", ms=elapsed))
                trail.attempts.append(TierAttempt(tier=tier.name, model=tier.engine.model, decision=None,
                                                  confidence=None, prompt_tokens=0, completion_tokens=0,
                                                  cost=0.0, error=str(error)))
                trail.reasons.append(f"{tier.name} tier failed ({type(error).__name__}: {error})")
                trail.next_tier = index + 1
            return
        generated_ms = (time.perf_counter() - started) * 1000
        self._decide(trails, index, generations, generated_ms)

    async def _generate(self, tier: Tier, queries: list[Query]) -> list[Generation]:
        call = tier.engine.generate(queries)
        generations = await (asyncio.wait_for(call, tier.timeout_s) if tier.timeout_s else call)
        if len(generations) != len(queries):
            raise RuntimeError(f"engine returned {len(generations)} generations for {len(queries)} queries")
        return generations

    def _decide(self, trails: list[Trail], index: int, generations: list[Generation], generated_ms: float) -> None:
        tier = self.tiers[index]
        scoring_started = time.perf_counter()
        signals = signals_of(generations)
        decision = self.cascade.decide(index, signals)
        prompt_tokens = np.fromiter((g.prompt_tokens for g in generations), np.int64, len(generations))
        completion_tokens = np.fromiter((g.completion_tokens for g in generations), np.int64, len(generations))
        seconds = np.fromiter(((g.prompt_ms + g.decode_ms) / 1000 for g in generations), np.float64,
                              len(generations))
        costs = tier.price.cost(prompt_tokens, completion_tokens, seconds)
        scored_ms = (time.perf_counter() - scoring_started) * 1000
        for i, (trail, generation) in enumerate(zip(trails, generations, strict=True)):
            escalate = bool(decision.escalate[i])
            confidence = float(decision.confidence[i])
            trail.latency.append(StageLatency(stage=f"tier:{tier.name}", ms=generated_ms))
            trail.latency.append(StageLatency(stage=f"score:{tier.name}", ms=scored_ms))
            trail.attempts.append(TierAttempt(
                tier=tier.name, model=generation.model, decision="escalate" if escalate else "accept",
                confidence=confidence, prompt_tokens=int(prompt_tokens[i]),
                completion_tokens=int(completion_tokens[i]), cost=float(costs[i])))
            trail.reasons.append(self.cascade.explain(index, signals, i, escalate))
            trail.best = _Answered(tier, generation, signals.row(i), confidence)
            if escalate:
                trail.next_tier = index + 1
            else:
                trail.result = self._answer(trail, degraded=False)

    def _fallback(self, trail: Trail) -> RoutedAnswer:
        if trail.best is None:
            raise AllTiersFailedError(f"query {trail.query.id}: every tier failed: " + "; ".join(trail.reasons))
        trail.reasons.append(f"returning the {trail.best.tier.name} tier's answer, marked degraded")
        return self._answer(trail, degraded=True)

    @staticmethod
    def _answer(trail: Trail, degraded: bool) -> RoutedAnswer:
        assert trail.best is not None
        generation = trail.best.generation
        return RoutedAnswer(
            request_id=trail.query.id,
            tenant=trail.query.tenant,
            answer=generation.text,
            tier=trail.best.tier.name,
            model=generation.model,
            confidence=trail.best.confidence,
            signals=trail.best.signals,
            reason=" → ".join(trail.reasons),
            cost=total_cost(trail.attempts),
            degraded=degraded,
            finish_reason=generation.finish_reason,
            prompt_tokens=sum(a.prompt_tokens for a in trail.attempts),
            completion_tokens=sum(a.completion_tokens for a in trail.attempts),
            attempts=trail.attempts,
            latency=trail.latency,
        )

