"""What the Batch API's and the progressive jobs' endpoints do, over the store and the queue; the
ingress only authenticates and calls these (one instance per ingress replica, none without a queue)."""

from __future__ import annotations

import asyncio
import codecs
import contextvars
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis

from cascade.breaker import RedisBreaker
from services.batch.queue import TaskQueue
from services.batch.schema import ENDPOINTS, BatchCreate, batch_object, custom_ids
from services.batch.store import SOCKET_TIMEOUT_S, TERMINAL, BatchStore, is_id, new_id
from services.openai_api import ApiError
from services.settings import CascadeSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
STORE_THREADS = 8  # the Batch API's own threads for its Redis and broker calls (see BatchApi._run)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A stored file, batch or job without its owner (and a job without its trail)."""
    return {k: v for k, v in record.items() if k not in {"tenant", "trail", "query"}}


class BatchApi:
    """Files, batches and jobs of one server, scoped by tenant: another tenant's id is a 404."""

    def __init__(self, settings: CascadeSettings, redis_url: str, breaker: RedisBreaker | None = None) -> None:
        self.settings = settings
        self.store = BatchStore(redis_url)
        self.tasks = TaskQueue(settings)
        self.breaker = breaker if breaker is not None else RedisBreaker(settings.redis_breaker)
        self._threads = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="cascade-batch-store")

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A synchronous store or queue call on this API's own threads, through the Redis breaker
        within its background timeout (see ``_call``)."""
        return await self._call(functools.partial(function, *args, **kwargs), None)

    async def _run_bulk(self, function: Callable[..., T], *args: Any) -> T:
        """The same for a call that moves a whole file, within the store's socket timeout."""
        return await self._call(functools.partial(function, *args), SOCKET_TIMEOUT_S)

    async def _call(self, function: Callable[[], T], timeout_s: float | None) -> T:
        """Run ``function`` on this API's own threads, in the caller's context (its trace), through the
        breaker (the process's, shared with the cache and the feedback log, when the ingress has one).
        A Redis that stops answering holds a thread up to the store's socket timeout (the broker's
        longer); on ``asyncio.to_thread``'s shared pool a few polls of a job would hold every thread the
        ingress embeds questions on, for all tenants. The breaker answers the caller at its timeout,
        and after a fault skips Redis for its cool-down: a ``RedisError`` at once (a 503, or a
        progressive job finished in the request), no thread held."""
        call = functools.partial(contextvars.copy_context().run, function)
        loop = asyncio.get_running_loop()
        return await self.breaker.call(lambda: loop.run_in_executor(self._threads, call), background=True,
                                       timeout_s=timeout_s)

    async def create_file(self, tenant: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        if purpose != "batch":
            raise ApiError(400, f"purpose {purpose!r} is not supported; use 'batch'", param="purpose")
        limit, max_lines = self.settings.server.max_upload_bytes, self.settings.queue.max_lines
        if len(content) > limit:
            raise ApiError(413, f"the file has {len(content)} bytes; this server's limit is {limit}", param="file",
                           code="file_too_large")
        lines = sum(1 for line in content.splitlines() if line.strip())
        if lines > max_lines:
            raise ApiError(413, f"the file has {lines} lines; this server's limit is {max_lines} lines per file",
                           param="file", code="file_too_large")
        return public(await self._run_bulk(self.store.save_file, tenant, filename, purpose, content))

    async def file(self, file_id: str, tenant: str) -> dict[str, Any]:
        meta = await self._run(self.store.file, file_id) if is_id("file", file_id) else None
        if meta is None or meta["tenant"] != tenant:
            raise ApiError(404, f"no file {file_id}", param="file_id", code="not_found")
        return meta

    async def file_content(self, file_id: str, tenant: str) -> bytes:
        await self.file(file_id, tenant)
        return await self._run_bulk(self.store.file_content, file_id) or b""

    async def create_batch(self, tenant: str, request: BatchCreate) -> dict[str, Any]:
        """Split the input file into chunks and queue them; the consumer routes each chunk as a batch."""
        if request.endpoint not in ENDPOINTS:
            raise ApiError(400, f"endpoint {request.endpoint!r} is not one of {sorted(ENDPOINTS)}", param="endpoint")
        meta = await self.file(request.input_file_id, tenant)
        if meta["purpose"] != "batch":
            raise ApiError(400, f"file {meta['id']} has purpose {meta['purpose']!r}, not 'batch'",
                           param="input_file_id")
        content = await self._run_bulk(self.store.file_content, request.input_file_id) or b""
        numbered = [(n, line) for n, line in enumerate(content.removeprefix(codecs.BOM_UTF8).splitlines(), start=1)
                    if line.strip()]  # a file saved with a byte order mark (Notepad, PowerShell) reads as without
        lines = [line for _, line in numbered]
        queue = self.settings.queue
        if not lines or len(lines) > queue.max_lines:
            raise ApiError(400, f"the input file has {len(lines)} lines; a batch takes 1 to {queue.max_lines}",
                           param="input_file_id")
        ids = custom_ids(lines, numbers=[n for n, _ in numbered])
        duplicates = sorted(c for c, n in Counter(ids).items() if n > 1)
        if duplicates:
            raise ApiError(400, f"custom_id values must be unique; repeated: {duplicates[:5]}", param="input_file_id")
        batch = batch_object(new_id("batch"), tenant, request, len(lines))
        chunks = -(-len(lines) // queue.chunk_size)
        if not await self._run_bulk(self.store.create_batch, batch, lines, ids, chunks, queue.tenant_quota_lines):
            raise ApiError(429, f"tenant {tenant!r} has more than {queue.tenant_quota_lines} lines queued; "
                                "retry when some batches finish", kind="rate_limit_error", code="queue_full",
                           headers={"Retry-After": "60"})
        for chunk in range(chunks):
            await self._run(self.tasks.route_chunk, batch["id"], chunk)
        return public(batch)

    async def batch(self, batch_id: str, tenant: str) -> dict[str, Any]:
        batch = await self._run(self.store.batch, batch_id) if is_id("batch", batch_id) else None
        if batch is None or batch["tenant"] != tenant:
            raise ApiError(404, f"no batch {batch_id}", param="batch_id", code="not_found")
        return public(batch)

    async def cancel_batch(self, batch_id: str, tenant: str) -> dict[str, Any]:
        """Stop the lines not yet routed; the batch becomes ``cancelled`` once its queued chunks drain."""
        batch = await self.batch(batch_id, tenant)
        if batch["status"] in TERMINAL:
            raise ApiError(409, f"batch {batch_id} is already {batch['status']}", param="batch_id")
        await self._run(self.store.cancel, batch_id)
        await self._run(self.store.update_batch, batch_id, status="cancelling", cancelling_at=int(time.time()),
                                unless_final=True)  # a batch that finished meanwhile keeps its final status
        return await self.batch(batch_id, tenant)

    async def start_job(self, job: dict[str, Any]) -> None:
        """Store a progressive request's job (its trail checkpoint) and queue its finishing."""
        await self._run(self.store.save_job, job)
        await self._run(self.tasks.finish_job, job["id"])

    async def job(self, job_id: str, tenant: str) -> dict[str, Any]:
        job = await self._run(self.store.job, job_id) if is_id("job", job_id) else None
        if job is None or job["tenant"] != tenant:
            raise ApiError(404, f"no job {job_id}", param="job_id", code="not_found")
        return public(job)

    async def completed_job(self, job_id: str) -> dict[str, Any] | None:
        """The job once completed (for the progressive stream), else None."""
        job = await self._run(self.store.job, job_id)
        return job if job is not None and job["status"] == "completed" else None

    async def sweep_stalled_batches(self) -> None:
        """Re-queue the unfinished chunks of batches that stopped progressing (a task lost with its
        replica before the broker redelivered it); chunks run idempotently, so a chunk that was only
        slow costs a repeat, never a duplicate line."""
        after = float(self.settings.queue.visibility_timeout_s)
        while True:
            await asyncio.sleep(max(1.0, after / 2))
            try:
                for batch_id in await self._run(self.store.active):
                    for chunk in await self._run(self.store.stalled_chunks, batch_id, after):
                        log.warning("batch %s chunk %d made no progress for %.0f s; queueing it again",
                                    batch_id, chunk, after)
                        await self._run(self.tasks.route_chunk, batch_id, chunk)
            except (redis.RedisError, OSError) as error:
                log.warning("stalled-batch sweep skipped: %s", error)
