"""Online threshold control: one confidence threshold per tenant and tier, kept in Redis.

A live threshold t for (tenant, tier) replaces that tier's policy decision with "escalate when
confidence < t". The controller reads the feedback stream through a consumer group (at-least-once;
a record id already processed is skipped, so redelivery is harmless) and moves each threshold
towards the value that meets its target:

- ``escalation_budget``: at most ``value`` of queries escalate — the ``value`` quantile of recent
  first-tier confidences;
- ``quality``: the estimated precision of accepted small answers (from user labels, shadow checks,
  and, below the threshold, escalated answers' agreement with the tier they went to) is at least
  ``value`` — the lowest threshold whose labelled answers above it are that
  precise; with ``delta``, guaranteed: the lowest threshold reached from the top (fixed-sequence
  testing, Learn-then-Test) while the Clopper–Pearson lower bound of that precision stays at or
  above ``value``, so the precision holds with probability at least 1 − ``delta``.

Moves are bounded (``max_step``), need ``min_samples`` records, and are skipped inside the
``hysteresis`` band. Routers re-read the thresholds every ``refresh_s`` seconds (≤ 5).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, Field, model_validator
from redis.exceptions import RedisError, ResponseError

from cascade.breaker import CircuitOpenError, RedisBreaker
from cascade.redis_clients import connect

log = logging.getLogger(__name__)
THRESHOLDS_KEY = "cascade:thresholds"


class ThresholdTarget(BaseModel):
    """What the controller aims for, for one tier."""

    kind: Literal["escalation_budget", "quality"]
    value: float = Field(ge=0.0, le=1.0)
    tier: str = "small"
    delta: float | None = Field(default=None, gt=0.0, lt=1.0, description=(
        "quality only: hold the target with probability at least 1 - delta (a confidence bound, not "
        "the point estimate)"))

    @model_validator(mode="after")
    def _delta_for_quality(self) -> ThresholdTarget:
        if self.delta is not None and self.kind != "quality":
            raise ValueError("delta applies to the quality target only")
        return self


class ControllerConfig(BaseModel):
    """Controller settings."""

    target: ThresholdTarget
    stream: str = "cascade:feedback"
    group: str = "cascade-thresholds"
    consumer: str = "controller"
    key: str = THRESHOLDS_KEY
    initial: float = Field(default=0.5, ge=0.0, le=1.0)
    max_step: float = Field(default=0.05, gt=0.0, le=1.0)
    min_samples: int = Field(default=50, ge=1)
    hysteresis: float = Field(default=0.01, ge=0.0)
    window: int = Field(default=2000, ge=10)
    decisions_kept: int = Field(default=100_000, ge=1, description=(
        "per tenant: the controlled tier's latest decisions remembered (about 200 bytes each), so that a "
        "label arriving later finds its answer's confidence; as many labels that came before their "
        "decision are kept for it"))


def field_name(tenant: str, tier: str) -> str:
    return f"{tenant}|{tier}"


def budget_threshold(confidence: np.ndarray, budget: float) -> float:
    """The threshold at which a share ``budget`` of these confidences falls below it."""
    return float(np.quantile(confidence, budget, method="lower")) if budget < 1 else 1.0


def quality_threshold(confidence: np.ndarray, correct: np.ndarray, target: float, min_samples: int) -> float | None:
    """The lowest threshold whose accepted answers (confidence ≥ it) are right at least ``target`` of the
    time, counting only thresholds with ``min_samples`` labelled answers above; None if none is."""
    order = np.argsort(-confidence)
    hits = np.cumsum(correct[order])
    counts = np.arange(1, len(order) + 1)
    ok = (hits / counts >= target) & (counts >= min_samples)
    if not ok.any():
        return None
    return float(confidence[order][np.flatnonzero(ok)[-1]])


def guaranteed_quality_threshold(confidence: np.ndarray, correct: np.ndarray, target: float, delta: float,
                                 min_samples: int) -> float | None:
    """From the highest threshold down (each with ``min_samples`` labelled answers above it or
    more), the last one before the Clopper–Pearson lower bound (1 − ``delta``) of the precision
    above it drops below ``target``; None if the first one already does."""
    from scipy.stats import beta

    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    counts = np.arange(1, len(order) + 1)
    tested = np.flatnonzero(counts >= min_samples)
    if not tested.size:
        return None
    k, n = hits[tested], counts[tested]
    lower = np.where(k > 0, beta.ppf(delta, np.maximum(k, 1), n - k + 1), 0.0)
    failing = np.flatnonzero(lower < target)
    passed = failing[0] if failing.size else len(tested)
    if passed == 0:
        return None
    return float(confidence[order][tested[passed - 1]])


@dataclass
class _TenantWindow:
    confidences: OrderedDict[str, float]  # first-tier confidence by request id, oldest first: routed again, once
    labelled: OrderedDict[str, tuple[float, float]]  # by request id, oldest first: (confidence, label), the latest


def _keep(kept: OrderedDict[str, Any], key: str, value: Any, size: int) -> None:
    """Set ``key`` as the newest entry of ``kept``, dropping the oldest beyond ``size`` (in constant time:
    a plain dict's first key is found by a scan past the slots its evictions left)."""
    kept[key] = value
    kept.move_to_end(key)
    if len(kept) > size:
        kept.popitem(last=False)


@dataclass
class ThresholdController:
    """Consumes the feedback stream and keeps the thresholds in Redis; call ``step`` repeatedly."""

    redis_url: str
    config: ControllerConfig
    windows: dict[str, _TenantWindow] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._client = connect(self.redis_url)
        self._seen: deque[str] = deque(maxlen=self.config.window * 4)
        self._seen_set: set[str] = set()
        self._decisions: dict[str, OrderedDict[str, float]] = {}  # tenant → request id → first-tier confidence
        self._early: dict[str, OrderedDict[str, float]] = {}  # tenant → request id → a label read before its decision
        self._group_ready = False
        self._backlog = True  # entries delivered to this consumer and not acknowledged (a restart): read first

    def _window(self, tenant: str) -> _TenantWindow:
        if tenant not in self.windows:
            self.windows[tenant] = _TenantWindow(OrderedDict(), OrderedDict())
        return self.windows[tenant]

    def _label(self, tenant: str, request_id: str, confidence: float, label: float) -> None:
        _keep(self._window(tenant).labelled, request_id, (confidence, label), self.config.window)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._client.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    def _remember(self, entry_id: str) -> bool:
        """False if this record id was processed before (redelivery)."""
        if entry_id in self._seen_set:
            return False
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(entry_id)
        self._seen_set.add(entry_id)
        return True

    def observe(self, entry_id: str, record: dict[str, Any]) -> None:
        """Fold one stream record into the windows (idempotent by id). A progressive answer's route has
        two records: the first tier's confidence counts from the first (``provisional``), when the
        decision was made, and not again from the final one (``resumed``: a job run twice or given up
        on still counts once), and a request routed again under its id (a batch chunk run twice) counts
        once, with its latest confidence; a label is taken for a final answer of the controlled tier only, found
        by its tenant's remembered decisions, or kept until its decision is read; a request labelled
        again counts once, with its latest label."""
        if not self._remember(entry_id):
            return
        tier = self.config.target.tier
        if record.get("kind") == "decision" and record.get("first_tier") == tier and not record.get("cache_hit"):
            confidence = record.get("first_confidence")
            if confidence is None:
                return
            tenant, request_id = str(record["tenant"]), str(record["request_id"])
            window = self._window(tenant)
            if not record.get("resumed"):
                _keep(window.confidences, request_id, float(confidence), self.config.window)
            agreement = record.get("first_agreement")
            if record.get("tier") != tier and agreement is not None:  # escalated: its answer against the final one
                self._label(tenant, request_id, float(confidence), float(agreement >= 0.5))
            if record.get("tier") == tier and not record.get("provisional"):
                _keep(self._decisions.setdefault(tenant, OrderedDict()), request_id, float(confidence),
                      self.config.decisions_kept)
                early = self._early.get(tenant, OrderedDict()).pop(request_id, None)
                if early is not None:
                    self._label(tenant, request_id, float(confidence), early)
        elif record.get("kind") == "outcome":
            tenant, request_id = str(record.get("tenant")), str(record.get("request_id"))
            label = float(record["correct"] if record.get("correct") is not None else (record.get("score") or 0) >= 0.5)
            known = self._decisions.get(tenant, OrderedDict()).get(request_id)
            if known is not None:
                self._label(tenant, request_id, known, label)
            else:  # its decision not read yet (buffered, another replica's), or of another tier
                _keep(self._early.setdefault(tenant, OrderedDict()), request_id, label, self.config.decisions_kept)

    def proposal(self, tenant: str) -> float | None:
        """Where this tenant's threshold should go, or None without enough evidence."""
        window, target = self._window(tenant), self.config.target
        if target.kind == "escalation_budget":
            if len(window.confidences) < self.config.min_samples:
                return None
            return budget_threshold(np.fromiter(window.confidences.values(), float), target.value)
        if len(window.labelled) < self.config.min_samples:
            return None
        labelled = np.array(list(window.labelled.values()))
        if target.delta is not None:
            return guaranteed_quality_threshold(labelled[:, 0], labelled[:, 1], target.value, target.delta,
                                                self.config.min_samples)
        return quality_threshold(labelled[:, 0], labelled[:, 1], target.value, self.config.min_samples)

    async def step(self, count: int = 5000, block_ms: int | None = None) -> dict[str, float]:
        """Read what is new on the stream, move thresholds, acknowledge; returns the thresholds moved.
        Entries delivered to this consumer before and never acknowledged (it stopped between the two)
        are read first."""
        await self._ensure_group()
        ids: list[bytes] = []
        if self._backlog:
            ids = await self._read("0", count, None)
            self._backlog = bool(ids)
        if not ids:
            ids = await self._read(">", count, block_ms)
        moved = await self._move()
        if ids:
            await self._client.xack(self.config.stream, self.config.group, *ids)
        return moved

    async def _read(self, start: str, count: int, block_ms: int | None) -> list[bytes]:
        """Observe the group's entries from ``start`` ("0": this consumer's unacknowledged ones; ">": new
        ones); their ids."""
        response = await self._client.xreadgroup(self.config.group, self.config.consumer,
                                                 {self.config.stream: start}, count=count, block=block_ms)
        ids = []
        for _, entries in response or []:
            for entry_id, fields in entries:
                ids.append(entry_id)  # acknowledged whatever it holds: a bad entry is skipped once, not forever
                try:
                    self.observe(entry_id.decode(), orjson.loads(fields[b"data"]))
                except (KeyError, TypeError, ValueError) as error:  # trimmed while pending (no fields), or not a record
                    log.warning("feedback entry %s skipped: %r", entry_id.decode(), error)
        return ids

    async def _move(self) -> dict[str, float]:
        tier, moved = self.config.target.tier, {}
        current = await self._client.hgetall(self.config.key)  # type: ignore[misc]  # redis-py types sync|async
        for tenant in self.windows:
            goal = self.proposal(tenant)
            if goal is None:
                continue
            name = field_name(tenant, tier)
            value = float(current.get(name.encode(), self.config.initial))
            if abs(goal - value) <= self.config.hysteresis:
                continue
            moved[name] = float(np.clip(value + np.clip(goal - value, -self.config.max_step, self.config.max_step),
                                        0.0, 1.0))
        if moved:
            await self._client.hset(self.config.key, mapping=moved)  # type: ignore[misc]
        return moved

    async def run(self, interval_s: float = 1.0) -> None:
        """Step forever (``cascade thresholds run``)."""
        while True:
            try:
                moved = await self.step(block_ms=int(interval_s * 1000))
                if moved:
                    log.info("thresholds moved: %s", moved)
            except (RedisError, OSError) as error:
                log.warning("threshold controller cannot reach Redis, retrying: %s", error)
                self._group_ready = False
                await asyncio.sleep(interval_s)

    async def close(self) -> None:
        await self._client.aclose()


def readable_thresholds(raw: dict[bytes, bytes]) -> tuple[dict[str, float], frozenset[bytes]]:
    """The thresholds hash's fields that are confidences (numbers from 0 to 1), by field name, and the
    names of the others (written by hand, say), left out: one bad field never stops the rest."""
    values: dict[str, float] = {}
    bad: set[bytes] = set()
    for name, value in raw.items():
        try:
            threshold = float(value)
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(threshold)
            values[name.decode()] = threshold
        except ValueError:  # UnicodeDecodeError too
            bad.add(name)
    return values, frozenset(bad)


@dataclass
class LiveThresholds:
    """The router's view of the thresholds, re-read at most every ``refresh_s`` seconds."""

    redis_url: str
    key: str = THRESHOLDS_KEY
    refresh_s: float = 2.0
    values: dict[str, float] = field(default_factory=dict)
    breaker: RedisBreaker = field(default_factory=RedisBreaker)
    _read_at: float = float("-inf")
    _ignored: frozenset[bytes] = frozenset()  # fields that are not confidences, logged when they change

    def __post_init__(self) -> None:
        self._client = connect(self.redis_url, socket_connect_timeout=1, socket_timeout=1)

    async def refresh(self, force: bool = False) -> None:
        """Re-read the thresholds when due; on a Redis fault keep the last values."""
        if not force and time.monotonic() - self._read_at < self.refresh_s:
            return
        self._read_at = time.monotonic()
        try:
            raw = await self.breaker.call(lambda: self._client.hgetall(self.key))  # type: ignore[arg-type,return-value]
        except CircuitOpenError:
            return
        except (RedisError, OSError) as error:
            log.warning("live thresholds unreachable, keeping the last values: %s", error)
            return
        self.values, ignored = readable_thresholds(raw)
        if ignored != self._ignored:
            if ignored:
                log.warning("live thresholds %s are not numbers from 0 to 1: ignored", sorted(ignored))
            self._ignored = ignored

    def for_tier(self, tenants: Sequence[str], tier: str) -> np.ndarray:
        """(len(tenants),) threshold per query; NaN where none is set."""
        return np.array([self.values.get(field_name(t, tier), np.nan) for t in tenants], np.float64)

    async def close(self) -> None:
        await self._client.aclose()
