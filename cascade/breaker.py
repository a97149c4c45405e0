"""A circuit breaker in front of Redis: an outage costs one short timeout, then no calls at all.

Every Redis call of the cache, the feedback log, the live thresholds and the rate limiter goes
through one breaker per process (the ingress's Batch API has one of its own). A call that fails
or does not answer within ``timeout_ms`` opens the circuit for ``cooldown_s``: callers then skip
Redis at once (the cache is off, feedback is buffered, limits are not enforced) without attempting
a call. After the cool-down one call probes Redis; success closes the circuit, failure opens it
for another cool-down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
T = TypeVar("T")


class BreakerConfig(BaseModel):
    """How long a Redis call may take and how long the circuit stays open after a fault."""

    model_config = ConfigDict(extra="forbid")

    timeout_ms: float = Field(default=100.0, gt=0, description="a request-path call slower than this is a fault")
    background_timeout_ms: float = Field(default=1000.0, gt=0,
                                         description="the same for calls off the request path (stores, feedback)")
    cooldown_s: float = Field(default=5.0, ge=0.0, description="Redis is skipped this long after a fault")


class RedisFaultError(RedisError):
    """A Redis call failed or did not answer in time; the circuit is now open, for ``retry_after_s`` more."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CircuitOpenError(RedisFaultError):
    """Redis is skipped during the breaker's cool-down; no call was attempted."""


@dataclass
class RedisBreaker:
    """Times Redis calls out and skips them during the cool-down after a fault (see module docstring)."""

    config: BreakerConfig = field(default_factory=BreakerConfig)
    clock: Callable[[], float] = time.monotonic
    attempts: int = 0
    failures: int = 0
    skipped: int = 0
    last_error: str | None = None
    _opened_at: float | None = None
    _probing: bool = False

    @property
    def state(self) -> str:
        """``closed`` (calls go to Redis), ``open`` (skipped) or ``half-open`` (a probe may go)."""
        if self._opened_at is None:
            return "closed"
        return "open" if self.clock() - self._opened_at < self.config.cooldown_s else "half-open"

    def allow(self) -> bool:
        """Whether a call may go to Redis now; counts the skip when not."""
        state = self.state
        if state == "closed" or (state == "half-open" and not self._probing):
            return True
        self.skipped += 1
        return False

    def check(self) -> None:
        """Raise ``CircuitOpenError`` (a skip) while the circuit is open: for a caller that waits before it calls."""
        if self.state == "open" and not self.allow():
            raise self._refusal()

    def _refusal(self) -> CircuitOpenError:
        return CircuitOpenError(f"Redis skipped for {self.config.cooldown_s:g} s after a fault: {self.last_error}",
                                self.open_for_s())

    def open_for_s(self) -> float:
        """Seconds until the cool-down ends (0 when the circuit is not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.config.cooldown_s - (self.clock() - self._opened_at))

    async def call(self, operation: Callable[[], Awaitable[T]], *, background: bool = False,
                   timeout_s: float | None = None) -> T:
        """Run ``operation`` within the timeout, or ``timeout_s`` in its place (``RedisFaultError`` if it
        fails or times out); raise ``CircuitOpenError`` without calling it while the circuit is open."""
        if not self.allow():
            raise self._refusal()
        probe = self.state == "half-open"
        self._probing = self._probing or probe
        timeout = timeout_s if timeout_s is not None else (
            self.config.background_timeout_ms if background else self.config.timeout_ms) / 1000
        self.attempts += 1
        try:
            async with asyncio.timeout(timeout):  # on the caller's task: ``wait_for`` makes a task per call
                result = await operation()
        except (RedisError, OSError, TimeoutError) as error:
            self._open(error, timeout)
            raise RedisFaultError(f"Redis fault: {self.last_error}", self.config.cooldown_s) from error
        finally:
            if probe:
                self._probing = False
        self._opened_at = None
        return result

    def _open(self, error: BaseException, timeout: float) -> None:
        self.failures += 1
        reason = f"no answer within {timeout * 1000:g} ms" if isinstance(error, TimeoutError) else (
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        if self._opened_at is None or self.state == "half-open":
            log.warning("Redis fault (%s); skipping Redis for %g s", reason, self.config.cooldown_s)
        self.last_error = reason[:200]
        self._opened_at = self.clock()

    def status(self) -> dict[str, object]:
        """What /healthz reports."""
        return {"state": self.state, "attempts": self.attempts, "failures": self.failures, "skipped": self.skipped,
                "last_error": self.last_error}
