"""Calls of concurrent callers made as one: while a call is under way, the callers that come meanwhile
wait for it to end and then go together in the next one. No timer: a lone caller goes at once, and a
caller waits only for a call that is already running. The cache's lookups use it, because most of their
cost is per call (one embedder call, one Redis round trip), so ``@serve.batch`` batches that overlap
share it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Runs ``run`` over the items of the callers who came while the previous run was under way, one
    result per item. A merged run that raises is run again caller by caller, so that one caller's fault
    fails that caller alone."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._run = run
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.runs = 0  # calls of ``run``
        self.items = 0  # items they took

    async def __call__(self, item: Item) -> Result:
        """``run([item])``'s result, from a run shared with the callers waiting beside this one."""
        if self._busy:
            future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            self._waiting.append((item, future))
            return await future
        self._busy = True
        try:
            return await self._alone(item)
        finally:
            self._next()

    async def _counted(self, items: list[Item]) -> list[Result]:
        self.runs += 1
        self.items += len(items)
        results = await self._run(items)
        if len(results) != len(items):
            raise RuntimeError(f"a coalesced run returned {len(results)} results for {len(items)} items")
        return results

    def _next(self) -> None:
        """Start the run of the callers who are waiting, or mark the coalescer idle."""
        waiting, self._waiting = [(i, f) for i, f in self._waiting if not f.done()], []
        if not waiting:
            self._busy = False
            return
        task = asyncio.create_task(self._serve(waiting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, waiting: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            try:
                outcomes: list[Result | BaseException] = list(await self._counted([i for i, _ in waiting]))
            except Exception as error:
                if len(waiting) == 1:
                    outcomes = [error]
                else:
                    log.warning("a coalesced run of %d callers failed (%s); running each alone", len(waiting),
                                type(error).__name__)
                    outcomes = await asyncio.gather(*(self._alone(i) for i, _ in waiting), return_exceptions=True)
            for (_, future), outcome in zip(waiting, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        finally:
            for _, future in waiting:  # cancelled while running: its callers are not left waiting
                if not future.done():
                    future.cancel()
            self._next()

    async def _alone(self, item: Item) -> Result:
        return (await self._counted([item]))[0]
