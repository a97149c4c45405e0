"""The feedback log: every routing decision and every outcome label, on a length-bounded Redis Stream.

When Redis is unreachable, or the Redis circuit breaker is open, records wait in a bounded in-memory
buffer (oldest dropped first when it overflows, counted and logged) and are written in the order
appended, ahead of the records of the next append that Redis takes; a write that fails or is
cancelled puts back what it took. A record that cannot be serialized, or is still unwritten when
the log closes, is logged and counted (``cascade.records.dropped``) and never stops the others.
Each decision also stores which tenant owns its request id, so that only that tenant may label it
(``owner_keys``; a service whose request ids carry their tenant, signed, stores none).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from cascade.answers import token_f1
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
    owner_keys: bool | None = Field(default=None, description=(
        "store each decision's tenant under its request id, for the feedback endpoint's check; none: yes, "
        "unless the service signs its request ids (server.request_id_secret; true there while switching over: "
        "replicas without the secret check the new ids by their owner keys)"))
    owner_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="how long a request id may be labelled")


def decision_record(answer: RoutedAnswer, *, provisional: bool = False, resumed: bool = False,
                    first_text: str | None = None) -> dict[str, Any]:
    """The stream entry of one routing decision. A progressive answer's route is recorded twice under
    its request id: ``provisional`` when that answer is returned (its escalation goes on), then
    ``resumed`` with the final answer its job found. An answer escalated past its first tier, whose
    first answer was ``first_text``, carries ``first_agreement``: that answer's token F1 against the
    final one, the implicit label a shadow check would give it (the threshold controller's only
    evidence below the threshold: user labels and shadow checks see accepted answers alone)."""
    first = answer.attempts[0] if answer.attempts else None
    agreement = (token_f1(first_text, [answer.answer]) if first is not None and first_text is not None
                 and answer.tier != first.tier and not provisional and not answer.degraded else None)
    return {
        "kind": "decision", "request_id": answer.request_id, "tenant": answer.tenant, "tier": answer.tier,
        "model": answer.model, "decision": "escalate" if len(answer.attempts) > 1 or provisional else "accept",
        "provisional": provisional, "resumed": resumed,
        "first_tier": first.tier if first else answer.tier,
        "first_confidence": first.confidence if first else answer.confidence,
        "confidence": answer.confidence, "signals": answer.signals.model_dump() if answer.signals else None,
        "cost": answer.cost, "latency_ms": sum(s.ms for s in answer.latency), "cache_hit": answer.cache_hit,
        "degraded": answer.degraded,
        "first_agreement": agreement,
    }


def outcome_record(request_id: str, tenant: str, correct: bool | None = None, score: float | None = None,
                   source: str = "user") -> dict[str, Any]:
    """The stream entry of a label: user feedback (correct or a score) or a shadow check's agreement."""
    if correct is None and score is None:
        raise ValueError("feedback needs 'correct' or 'score'")
    return {"kind": "outcome", "request_id": request_id, "tenant": tenant, "correct": correct, "score": score,
            "source": source}


Record = dict[str, Any]
Numbered = tuple[int, Record]  # a record with its number, in the order appended


def _is_label(record: Record) -> bool:
    return record.get("kind") == "outcome"


class Held:
    """Buffered records, labels apart from decision records (each in the order appended), so that a
    full buffer drops its oldest decision in constant time; iterated, they come in the order appended."""

    def __init__(self) -> None:
        self.labels: deque[Numbered] = deque()
        self.decisions: deque[Numbered] = deque()

    def __len__(self) -> int:
        return len(self.labels) + len(self.decisions)

    def __iter__(self) -> Iterator[Numbered]:
        if not self.labels or not self.decisions:
            return iter(self.labels or self.decisions)
        return heapq.merge(self.labels, self.decisions, key=itemgetter(0))

    def append(self, item: Numbered) -> None:
        (self.labels if _is_label(item[1]) else self.decisions).append(item)

    def clear(self) -> None:
        self.labels.clear()
        self.decisions.clear()


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
        self._buffer = Held()
        self._numbers = itertools.count()
        self._writing: dict[int, list[Numbered]] = {}  # what each write under way took out of the buffer
        self._writes = itertools.count()
        self._idle = asyncio.Event()  # set while no write is under way
        self._idle.set()
        self._closed = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _hold(self, numbered: Iterable[Numbered]) -> None:
        """Buffer records with their numbers. A full buffer drops its oldest decision record (counted per
        tenant), and keeps its labels, which their senders were told were accepted; with nothing but
        labels held, a newcomer that is not a user's label is dropped, and a user's label (one the
        feedback endpoint let through at the edge) takes the oldest label's place."""
        held = self._buffer
        for item in numbered:
            if len(held) >= self.config.buffer_size:
                if held.decisions:
                    self._drop([held.decisions.popleft()[1]], "buffer_full")
                elif item[1].get("source") != "user":  # a decision, or a shadow check's label: the newcomer goes
                    self._drop([item[1]], "buffer_full")
                    continue
                else:
                    self._drop([held.labels.popleft()[1]], "buffer_full")
            held.append(item)

    @property
    def full_of_labels(self) -> bool:
        """Whether labels alone, buffered or in a write under way (put back if it fails), fill the buffer:
        a new label would drop an accepted one."""
        writing = sum(_is_label(record) for taken in self._writing.values() for _, record in taken)
        return len(self._buffer.labels) + writing >= self.config.buffer_size

    def _drop(self, records: Sequence[Record], reason: str) -> None:
        self.dropped += len(records)
        for record in records:
            count_dropped("feedback", str(record.get("tenant")), reason)

    def _put_back(self, numbered: Sequence[Numbered]) -> None:
        """Buffer again what a write took and could not write, in the order appended among what came
        or was put back meanwhile; after ``close`` nothing will write them: they are dropped, counted."""
        if self._closed:
            self._drop([record for _, record in numbered], "closed_unwritten")
            return
        merged = sorted([*numbered, *self._buffer], key=itemgetter(0))
        self._buffer.clear()
        self._hold(merged)

    def _serialized(self, numbered: Iterable[Numbered]) -> list[tuple[int, Record, bytes]]:
        """Each record with its number and JSON; one that cannot be serialized is logged, counted and left
        out alone."""
        out = []
        for number, record in numbered:
            try:
                out.append((number, record, orjson.dumps(record)))
            except (TypeError, orjson.JSONEncodeError) as error:
                self._drop([record], type(error).__name__)
                log.warning("request %s: %s record not stored, it cannot be serialized: %s",
                            record.get("request_id"), record.get("kind"), error)
        return out

    def _owner_key(self, request_id: str) -> str:
        return f"{self.config.stream}:owner:{request_id}"

    async def append(self, records: Sequence[Record]) -> bool:
        """Write buffered records, then these, in one pipeline; False (and buffered) if Redis is down or
        skipped by the circuit breaker. A write takes what it writes out of the buffer and puts it back
        if it fails or is cancelled: appends in flight together never write a record twice, and never
        drop what another one took or held. At least once: a write that Redis ran but whose reply was
        lost (a timeout, a dropped connection, a cancel) is written again."""
        numbered = [(next(self._numbers), record) for record in records]
        if self._closed:
            self._drop(records, "closed")
            return False
        if not self.breaker.allow():  # Redis skipped: no call, no serialization, no copy of the buffer
            self._hold(numbered)
            return False
        taken = [*self._buffer, *numbered]
        self._buffer.clear()
        if not taken:
            return True
        write = next(self._writes)
        self._writing[write] = taken
        self._idle.clear()
        written = False
        try:
            pending = self._serialized(taken)
            self._writing[write] = [(number, record) for number, record, _ in pending]  # the rest are dropped
            if pending:
                await self.breaker.call(lambda: self._write(pending), background=True)
            written = True
        except (RedisError, OSError) as error:
            log.warning("feedback log unreachable, %d records to buffer again: %s", len(taken), error)
        finally:
            if not written:
                self._put_back(self._writing[write])
            del self._writing[write]
            if not self._writing:
                self._idle.set()
        return written

    async def _write(self, pending: Sequence[tuple[int, Record, bytes]]) -> None:
        """One pipeline: each record on the stream, and each decision's owner (``owner_keys``)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for _, record, data in pending:
                pipe.xadd(self.config.stream, {"data": data}, maxlen=self.config.max_length, approximate=True)
                if self.config.owner_keys is not False and record.get("kind") == "decision":
                    pipe.set(self._owner_key(str(record.get("request_id"))), str(record.get("tenant")),
                             ex=self.config.owner_ttl_s)
            await pipe.execute()

    def _waiting_owner(self, request_id: str) -> str | None:
        """The tenant of a decision not written yet (buffered, or in a write under way)."""
        waiting = (record for _, record in itertools.chain(*self._writing.values(), self._buffer))
        return next((str(r.get("tenant")) for r in waiting
                     if r.get("kind") == "decision" and r.get("request_id") == request_id), None)

    async def owner(self, request_id: str) -> str | None:
        """The tenant whose decision ``request_id`` is, or None if unknown (``RedisError`` if Redis is
        unreachable or skipped and the decision is not waiting here). A decision waiting here is found
        before Redis is asked: from there, it only moves on to Redis."""
        waiting = self._waiting_owner(request_id)
        if waiting is not None:
            return waiting
        raw = await self.breaker.call(lambda: self._client.get(self._owner_key(request_id)), background=True)
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def flush(self) -> bool:
        """Try to write what is buffered."""
        return await self.append([])

    async def read_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Every record on the stream with its id (for tests and offline jobs; not timed out)."""
        entries = await self._client.xrange(self.config.stream)
        return [(entry_id.decode(), orjson.loads(fields[b"data"])) for entry_id, fields in entries]

    async def close(self) -> None:
        """Try once more to write what is buffered, let the writes under way end (each within the
        breaker's timeout), then disconnect; what is left unwritten is dropped, counted and logged."""
        await self.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.breaker.config.background_timeout_ms / 1000
        while self._writing and loop.time() < deadline:  # a write may start between the event and this task
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), deadline - loop.time())
        self._closed = True
        if self._buffer:
            log.warning("feedback log closed with %d records unwritten (Redis unreachable)", len(self._buffer))
            self._drop([record for _, record in self._buffer], "closed_unwritten")
            self._buffer.clear()
        await self._client.aclose()
