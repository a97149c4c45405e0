"""Finished trails recorded (cache stores, feedback appends) off the request path, coalesced across
requests: a request adds its trails to a buffer and returns; one task per window writes everything the
window gathered, in batches. Cheaper per request than a task and a ``@serve.batch`` call each (the
ingress's profile under load: Serve's batching spends per call on argument signatures and metrics)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from cascade.router import Trail

log = logging.getLogger(__name__)


class TrailRecorder:
    """Coalesces ``add``-ed trails for ``wait_s`` and hands them to ``record`` in batches of at most
    ``max_batch``; a failing batch is logged with its request ids and never fails another."""

    def __init__(self, record: Callable[[Sequence[Trail]], Awaitable[None]], wait_s: float = 0.05,
                 max_batch: int = 256) -> None:
        self._record = record
        self.wait_s = wait_s
        self.max_batch = max_batch
        self._pending: list[Trail] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, trails: Sequence[Trail]) -> None:
        """Buffer ``trails``; the first trail of a window sets its timer."""
        if not trails:
            return
        self._pending.extend(trails)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.wait_s, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        task = asyncio.create_task(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def flush(self) -> None:
        """Record everything buffered now."""
        trails, self._pending = self._pending, []
        for start in range(0, len(trails), self.max_batch):
            batch = trails[start:start + self.max_batch]
            try:
                await self._record(batch)
            except Exception:  # never let one batch's records fail the others
                log.exception("recording requests %s failed", [t.query.id for t in batch])

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        """Record what is buffered at once and wait for the flushes under way."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await asyncio.gather(self.flush(), *self._flushes, return_exceptions=True)
