"""The feedback log: every routing decision and every outcome label, on a length-bounded Redis Stream.

When Redis is unreachable, records wait in a bounded in-memory buffer (oldest dropped first when it
overflows, counted and logged) and are flushed, in order, before the next append that succeeds.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from cascade.schemas import RoutedAnswer

log = logging.getLogger(__name__)


class FeedbackConfig(BaseModel):
    """Feedback stream settings."""

    stream: str = "cascade:feedback"
    max_length: int = Field(default=1_000_000, ge=1000, description="approximate stream length bound")
    buffer_size: int = Field(default=10_000, ge=1, description="records kept in memory while Redis is down")


def decision_record(answer: RoutedAnswer) -> dict[str, Any]:
    """The stream entry of one routing decision."""
    first = answer.attempts[0] if answer.attempts else None
    return {
        "kind": "decision", "request_id": answer.request_id, "tenant": answer.tenant, "tier": answer.tier,
        "model": answer.model, "decision": "escalate" if len(answer.attempts) > 1 else "accept",
        "first_tier": first.tier if first else answer.tier,
        "first_confidence": first.confidence if first else answer.confidence,
        "confidence": answer.confidence, "signals": answer.signals.model_dump() if answer.signals else None,
        "cost": answer.cost, "latency_ms": sum(s.ms for s in answer.latency), "cache_hit": answer.cache_hit,
        "degraded": answer.degraded,
    }


def outcome_record(request_id: str, tenant: str, correct: bool | None = None, score: float | None = None,
                   source: str = "user") -> dict[str, Any]:
    """The stream entry of a label: user feedback (correct or a score) or a shadow check's agreement."""
    if correct is None and score is None:
        raise ValueError("feedback needs 'correct' or 'score'")
    return {"kind": "outcome", "request_id": request_id, "tenant": tenant, "correct": correct, "score": score,
            "source": source}


@dataclass
class FeedbackLog:
    """Appends records to the stream; buffers while Redis is unreachable."""

    redis_url: str
    config: FeedbackConfig = field(default_factory=FeedbackConfig)
    dropped: int = 0

    def __post_init__(self) -> None:
        self._client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=1, socket_timeout=2)
        self._buffer: deque[dict[str, Any]] = deque()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _hold(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            if len(self._buffer) >= self.config.buffer_size:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(record)

    async def append(self, records: Sequence[dict[str, Any]]) -> bool:
        """Write buffered records, then these, in one pipeline; False (and buffered) if Redis is down."""
        pending = [*self._buffer, *records]
        if not pending:
            return True
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for record in pending:
                    pipe.xadd(self.config.stream, {"data": orjson.dumps(record)}, maxlen=self.config.max_length,
                              approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as error:
            self._buffer.clear()
            self._hold(pending)
            log.warning("feedback log unreachable, %d records buffered (%d dropped): %s",
                        len(self._buffer), self.dropped, error)
            return False
        self._buffer.clear()
        return True

    async def flush(self) -> bool:
        """Try to write what is buffered."""
        return await self.append([])

    async def read_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Every record on the stream with its id (for tests and offline jobs)."""
        entries = await self._client.xrange(self.config.stream)
        return [(entry_id.decode(), orjson.loads(fields[b"data"])) for entry_id, fields in entries]

    async def close(self) -> None:
        """Try once more to write what is buffered, then disconnect."""
        await self.flush()
        await self._client.aclose()
