"""The demo: SQuAD 2.0 questions sent concurrently through the router's HTTP API with the official
``openai`` client, scored against the small tier alone and the large tier alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai

from pipelines.datasets import QARecord
from pipelines.metrics import exact_match


class DemoFailedError(RuntimeError):
    """The router refused or failed a demo question; carries what it answered."""


@dataclass(frozen=True)
class Reply:
    """One answer and the ``routing`` object it came with."""

    text: str
    routing: dict[str, Any]

    @property
    def cost(self) -> float:
        return float(self.routing["cost"])


@dataclass(frozen=True)
class DemoRow:
    """One question: what each tier said, what the router returned."""

    record: QARecord
    small: Reply
    large: Reply
    routed: Reply

    @property
    def escalated(self) -> bool:
        return len(self.routed.routing["attempts"]) > 1


def summarize(rows: Sequence[DemoRow]) -> dict[str, object]:
    """The demo's summary: escalation rate, exact match and cost for small, large and routed."""
    def em(replies: list[Reply]) -> float:
        scores = [exact_match(r.text, row.record.answers) for r, row in zip(replies, rows, strict=True)]
        return round(float(np.mean(scores)), 4) if rows else 0.0

    columns = {"small": [r.small for r in rows], "large": [r.large for r in rows], "routed": [r.routed for r in rows]}
    return {
        "n": len(rows),
        "escalation_rate": round(float(np.mean([r.escalated for r in rows])), 4) if rows else 0.0,
        "cache_hits": sum(bool(r.routed.routing["cache_hit"]) for r in rows),
        "max_batch_size": max((int(r.routed.routing["batch_size"]) for r in rows), default=0),
        "exact_match": {name: em(replies) for name, replies in columns.items()},
        "cost": {name: float(sum(r.cost for r in replies)) for name, replies in columns.items()},
    }


async def _ask(client: openai.AsyncOpenAI, model: str, record: QARecord) -> Reply:
    try:
        response = await client.completions.create(model=model, prompt=record.question,
                                                   extra_body={"context": list(record.context)})
    except openai.APIStatusError as error:
        raise DemoFailedError(f"the router answered {error.status_code} to model {model!r}: {error.message}") from None
    except openai.APIConnectionError as error:
        raise DemoFailedError(f"the router did not answer model {model!r}: {error}") from None
    return Reply(response.choices[0].text, dict((response.model_extra or {})["routing"]))


async def run_demo(url: str, records: Sequence[QARecord], *, api_key: str | None = None, concurrency: int = 8,
                   on_progress: Callable[[int], None] = lambda done: None) -> list[DemoRow]:
    """Send every question to the router, and to the small and large tiers alone (which needs a key
    whose plan allows overrides), ``concurrency`` questions at a time so the ingress batches them."""
    client = openai.AsyncOpenAI(base_url=f"{url.rstrip('/')}/v1", api_key=api_key or "none", max_retries=1,
                                timeout=600)
    limit = asyncio.Semaphore(concurrency)
    done = 0
    tiers = [m.id for m in (await client.models.list()).data if m.id != "cascade"]
    first, last = tiers[0], tiers[-1]

    async def one(record: QARecord) -> DemoRow:
        nonlocal done
        async with limit:
            routed = await _ask(client, "cascade", record)
            small, large = await asyncio.gather(_ask(client, first, record), _ask(client, last, record))
        done += 1
        on_progress(done)
        return DemoRow(record, small, large, routed)

    try:
        return list(await asyncio.gather(*(one(r) for r in records)))
    finally:
        await client.close()

