"""The Batch API's synchronous Redis and broker calls, run for the ingress's event loop on threads
of their own and behind a breaker of their own.

Own threads: a Redis that stops answering holds a thread up to the store's socket timeout, and on
``asyncio.to_thread``'s shared pool (CPU count + 4) a few polls of a job would hold every thread the
ingress embeds questions on, for all tenants. Own breaker: a slow upload or a busy pool never turns
the cache or the rate limits off. A call's timeout starts once a thread is free for it; a call that
finds none within its timeout is a 503 (busy), not a Redis fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from cascade.breaker import RedisBreaker
from services.openai_api import ApiError

T = TypeVar("T")
STORE_THREADS = 8


class StoreCalls:
    """Runs synchronous store and queue calls on ``threads`` threads through ``breaker``."""

    def __init__(self, breaker: RedisBreaker, threads: int = STORE_THREADS) -> None:
        self.breaker = breaker
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="cascade-batch-store")
        self._free = asyncio.Semaphore(threads)  # released when a thread is done, not when its caller gave up

    async def run(self, function: Callable[[], T], timeout_s: float) -> T:
        """``function()`` on a free thread in the caller's context (its trace), within ``timeout_s``."""
        self.breaker.check()
        try:
            async with asyncio.timeout(timeout_s):
                await self._free.acquire()
        except TimeoutError:
            raise ApiError(503, "the batch store's threads are all busy; retry shortly", kind="service_unavailable",
                           headers={"Retry-After": "1"}) from None
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, function)
        submitted: list[Future[T]] = []

        async def on_a_thread() -> T:
            future = self._pool.submit(call)
            submitted.append(future)
            future.add_done_callback(functools.partial(self._release, loop))
            return await asyncio.wrap_future(future)

        try:
            return await self.breaker.call(on_a_thread, timeout_s=timeout_s)
        finally:
            if not submitted:
                self._free.release()

    def _release(self, loop: asyncio.AbstractEventLoop, _: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while the thread still waited on Redis
            loop.call_soon_threadsafe(self._free.release)
