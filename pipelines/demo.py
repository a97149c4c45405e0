"""The demo: SQuAD 2.0 questions through the router, scored against small-only and large-only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cascade.cache import CacheConfig
from cascade.config import CascadeSettings
from cascade.factory import build_router
from cascade.feedback import decision_record
from cascade.router import Router, Tier
from cascade.schemas import Query, RoutedAnswer
from pipelines.datasets import QARecord
from pipelines.metrics import exact_match


@dataclass(frozen=True)
class DemoRow:
    """One question: what each tier said, what the router returned, and how each scored."""

    record: QARecord
    small_answer: str
    large_answer: str
    routed: RoutedAnswer
    small_cost: float
    large_cost: float

    @property
    def escalated(self) -> bool:
        return len(self.routed.attempts) > 1


def summarize(rows: Sequence[DemoRow]) -> dict[str, object]:
    """The demo's summary: escalation rate, exact match and cost for small, large and routed."""
    def em(answers: list[str]) -> float:
        scores = [exact_match(a, r.record.answers) for a, r in zip(answers, rows, strict=True)]
        return round(float(np.mean(scores)), 4) if rows else 0.0

    return {
        "n": len(rows),
        "escalation_rate": round(float(np.mean([r.escalated for r in rows])), 4) if rows else 0.0,
        "exact_match": {
            "small": em([r.small_answer for r in rows]),
            "large": em([r.large_answer for r in rows]),
            "routed": em([r.routed.answer for r in rows]),
        },
        "cost": {
            "small": float(sum(r.small_cost for r in rows)),
            "large": float(sum(r.large_cost for r in rows)),
            "routed": float(sum(r.routed.cost for r in rows)),
        },
    }


async def _run_last_tier(tier: Tier, queries: list[Query]) -> tuple[list[str], list[float]]:
    if not queries:
        return [], []
    generations = await tier.engine.generate(queries)
    return [g.text for g in generations], tier.price.cost_of(generations).tolist()


async def _demo_chunk(router: Router, records: Sequence[QARecord], settings: CascadeSettings) -> list[DemoRow]:
    queries = [Query(prompt=r.question, context=list(r.context), params=settings.generation) for r in records]
    trails = await router.first_pass(queries)
    small = [(t.best.generation.text if t.best else "", t.attempts[0].cost) for t in trails]
    routed = await asyncio.gather(*(router.finish(t) for t in trails))
    last = router.tiers[-1]
    missing = [i for i, answer in enumerate(routed) if answer.attempts[-1].tier != last.name]
    texts, costs = await _run_last_tier(last, [queries[i] for i in missing])
    large = {i: (a.answer, a.attempts[-1].cost) for i, a in enumerate(routed) if i not in missing}
    large.update(zip(missing, zip(texts, costs, strict=True), strict=True))
    if router.feedback is not None:
        await router.feedback.append([decision_record(a) for a in routed])
    return [DemoRow(record, small[i][0], large[i][0], routed[i], small[i][1], large[i][1])
            for i, record in enumerate(records)]


async def run_demo(settings: CascadeSettings, records: Sequence[QARecord], *, chunk_size: int = 4,
                   on_progress: Callable[[int], None] = lambda done: None) -> list[DemoRow]:
    """Route every record in chunks (each chunk one batched first pass); also run the last tier on
    the questions the router did not send there, for the large-only baseline.

    Decisions go to the feedback log (a local Redis is started if none is configured). The semantic
    cache stays off here: a second demo run would otherwise measure the cache, not the tiers.
    """
    router = build_router(settings.model_copy(update={"cache": CacheConfig(enabled=False)}), with_redis=True)
    await router.start()
    rows: list[DemoRow] = []
    try:
        for start in range(0, len(records), chunk_size):
            rows.extend(await _demo_chunk(router, records[start:start + chunk_size], settings))
            on_progress(len(rows))
    finally:
        await router.close()
    return rows
