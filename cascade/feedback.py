"""The feedback log: every routing decision and every outcome label, on a length-bounded Redis Stream.

When Redis is unreachable, or the Redis circuit breaker is open, records wait in a bounded in-memory
buffer (oldest dropped first when it overflows, counted and logged) and are flushed, in order,
before the next append that succeeds. A record that cannot be serialized is logged and counted
(``cascade.records.dropped``) and never stops the others. Each decision also stores which tenant
owns its request id, so that only that tenant may label it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from cascade.breaker import RedisBreaker
from cascade.redis_clients import connect
from cascade.schemas import RoutedAnswer
from cascade.telemetry import count_dropped

log = logging.getLogger(__name__)


class FeedbackConfig(BaseModel):
    """Feedback stream settings."""

    stream: str = "cascade:feedback"
    max_length: int = Field(default=1_000_000, ge=1000, description="approximate stream length bound")
    buffer_size: int = Field(default=10_000, ge=1, description="records kept in memory while Redis is down")
    owner_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="how long a request id may be labelled")


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


Record = dict[str, Any]


@dataclass
class FeedbackLog:
    """Appends records to the stream; buffers while Redis is unreachable."""

    redis_url: str
    config: FeedbackConfig = field(default_factory=FeedbackConfig)
    dropped: int = 0
    breaker: RedisBreaker = field(default_factory=RedisBreaker)

    def __post_init__(self) -> None:
        # no socket timeout: the breaker times every call out, and one per reply besides costs a timer per
        # read (a quarter of an append's CPU)
        self._client = connect(self.redis_url, socket_connect_timeout=1)
        # records as they came, serialized when they are written: a request made while Redis is skipped
        # pays no serialization, and no serialized copy is kept (orjson's output holds a buffer of 4 KB
        # and more per record: 100,000 records of 560 bytes kept 779 MB resident)
        self._buffer: deque[Record] = deque()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _hold(self, records: Iterable[Record]) -> None:
        """Buffer ``records``; a full buffer drops its oldest record (logged per tenant as a drop)."""
        for record in records:
            if len(self._buffer) >= self.config.buffer_size:
                oldest = self._buffer.popleft()
                self.dropped += 1
                count_dropped("feedback", str(oldest.get("tenant")), "buffer_full")
            self._buffer.append(record)

    def _serialized(self, records: Iterable[Record]) -> list[tuple[Record, bytes]]:
        """Each record with its JSON; one that cannot be serialized is logged, counted and left out alone."""
        out = []
        for record in records:
            try:
                out.append((record, orjson.dumps(record)))
            except (TypeError, orjson.JSONEncodeError) as error:
                self.dropped += 1
                count_dropped("feedback", str(record.get("tenant")), type(error).__name__)
                log.warning("request %s: %s record not stored, it cannot be serialized: %s",
                            record.get("request_id"), record.get("kind"), error)
        return out

    def _owner_key(self, request_id: str) -> str:
        return f"{self.config.stream}:owner:{request_id}"

    async def append(self, records: Sequence[Record]) -> bool:
        """Write buffered records, then these, in one pipeline; False (and buffered) if Redis is down
        or skipped by the circuit breaker. A write takes what it writes out of the buffer: appends in
        flight together never write a record twice, and one that fails never drops what another held."""
        if self._buffer and not self.breaker.allow():  # Redis skipped: no call, no copy of the buffer
            self._hold(records)
            return False
        taken = [*self._buffer, *records]
        self._buffer.clear()
        pending = self._serialized(taken)
        if not pending:
            return True

        async def write() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for record, data in pending:
                    pipe.xadd(self.config.stream, {"data": data}, maxlen=self.config.max_length, approximate=True)
                    if record.get("kind") == "decision":
                        pipe.set(self._owner_key(str(record.get("request_id"))), str(record.get("tenant")),
                                 ex=self.config.owner_ttl_s)
                await pipe.execute()

        try:
            await self.breaker.call(write, background=True)
        except (RedisError, OSError) as error:
            held_meanwhile = list(self._buffer)  # by appends made during this one: they stay behind it
            self._buffer.clear()
            self._hold([*(record for record, _ in pending), *held_meanwhile])
            log.warning("feedback log unreachable, %d records buffered (%d dropped): %s",
                        len(self._buffer), self.dropped, error)
            return False
        return True

    async def owner(self, request_id: str) -> str | None:
        """The tenant whose decision ``request_id`` is, or None if unknown (``RedisError`` if Redis is
        unreachable or skipped)."""
        raw = await self.breaker.call(lambda: self._client.get(self._owner_key(request_id)), background=True)
        if raw is None:
            return next((str(r.get("tenant")) for r in self._buffer
                         if r.get("kind") == "decision" and r.get("request_id") == request_id), None)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def flush(self) -> bool:
        """Try to write what is buffered."""
        return await self.append([])

    async def read_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Every record on the stream with its id (for tests and offline jobs; not timed out)."""
        entries = await self._client.xrange(self.config.stream)
        return [(entry_id.decode(), orjson.loads(fields[b"data"])) for entry_id, fields in entries]

    async def close(self) -> None:
        """Try once more to write what is buffered, then disconnect."""
        await self.flush()
        await self._client.aclose()
