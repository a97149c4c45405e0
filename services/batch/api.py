"""What the Batch API's and the progressive jobs' endpoints do, over the store and the queue; the
ingress only authenticates and calls these (one instance per ingress replica, none without a queue)."""

from __future__ import annotations

import asyncio
import codecs
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from cascade.breaker import RedisBreaker
from services.batch.queue import TaskQueue
from services.batch.schema import ENDPOINTS, BatchCreate, batch_object, custom_ids
from services.batch.store import SOCKET_TIMEOUT_S, TERMINAL, BatchStore, StorageQuotaError, is_id, new_id
from services.batch.threads import StoreCalls
from services.openai_api import ApiError
from services.settings import CascadeSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNKS_PER_CALL = 100  # chunks a batch's queueing enqueues per call on a store thread
LONG_CALL_S = 4 * SOCKET_TIMEOUT_S + 5  # connect and up to three Redis steps (two publishes, a read)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A stored file, batch or job without its owner (and a job without its trail)."""
    return {k: v for k, v in record.items() if k not in {"tenant", "trail", "query"}}


class BatchApi:
    """Files, batches and jobs of one server, scoped by tenant: another tenant's id is a 404."""

    def __init__(self, settings: CascadeSettings, redis_url: str) -> None:
        self.settings = settings
        self.store = BatchStore(redis_url, retention_s=settings.queue.retention_s)
        self.tasks = TaskQueue(settings)
        self.calls = StoreCalls(RedisBreaker(settings.redis_breaker))

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store or queue call within the breaker's background timeout (see ``StoreCalls``)."""
        timeout_s = self.settings.redis_breaker.background_timeout_ms / 1000
        return await self.calls.run(functools.partial(function, *args, **kwargs), timeout_s)

    async def _run_long(self, function: Callable[..., T], *args: Any) -> T:
        """A call that moves a whole file, or that a client must not repeat after a timeout (storing a
        batch, queueing), within ``LONG_CALL_S``: the socket timeouts end it first, so the caller learns
        its outcome. After a fault, a PING probes Redis first."""
        if self.calls.breaker.state == "half-open":
            await self._run(self.store.ping)
        return await self.calls.run(functools.partial(function, *args), LONG_CALL_S)

    async def create_file(self, tenant: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        if purpose != "batch":
            raise ApiError(400, f"purpose {purpose!r} is not supported; use 'batch'", param="purpose")
        queue = self.settings.queue
        limit, max_lines = self.settings.server.max_upload_bytes, queue.max_lines
        if len(content) > limit:
            raise ApiError(413, f"the file has {len(content)} bytes; this server's limit is {limit}", param="file",
                           code="file_too_large")
        if not content or content.isspace():
            raise ApiError(400, "the file is empty", param="file")
        # before splitting: 64 MB of blank lines would be 64 M objects
        breaks = content.count(b"\n") + content.count(b"\r") - content.count(b"\r\n")
        if breaks > 2 * max_lines:
            raise ApiError(413, f"the file has {breaks} line breaks; this server's limit is {max_lines} lines per file "
                                f"and {2 * max_lines} line breaks", param="file", code="file_too_large")
        lines = sum(1 for line in content.splitlines() if line.strip())
        if lines > max_lines:
            raise ApiError(413, f"the file has {lines} lines; this server's limit is {max_lines} lines per file",
                           param="file", code="file_too_large")
        try:
            return public(await self._run_long(self.store.save_upload, tenant, filename, purpose, content,
                                               queue.tenant_quota_bytes))
        except StorageQuotaError as full:
            raise ApiError(413, f"tenant {tenant!r} has {full.used} bytes of files stored; this server keeps at most "
                                f"{full.quota} per tenant, each file for {queue.retention_s // 86400} days",
                           param="file", code="storage_quota_exceeded") from None

    async def file(self, file_id: str, tenant: str) -> dict[str, Any]:
        meta = await self._run(self.store.file, file_id) if is_id("file", file_id) else None
        if meta is None or meta["tenant"] != tenant:
            raise ApiError(404, f"no file {file_id}", param="file_id", code="not_found")
        return meta

    async def file_content(self, file_id: str, tenant: str) -> bytes:
        await self.file(file_id, tenant)
        return await self._run_long(self.store.file_content, file_id) or b""

    async def create_batch(self, tenant: str, request: BatchCreate) -> dict[str, Any]:
        """Split the input file into chunks and queue them; the consumer routes each chunk as a batch."""
        if request.endpoint not in ENDPOINTS:
            raise ApiError(400, f"endpoint {request.endpoint!r} is not one of {sorted(ENDPOINTS)}", param="endpoint")
        meta = await self.file(request.input_file_id, tenant)
        if meta["purpose"] != "batch":
            raise ApiError(400, f"file {meta['id']} has purpose {meta['purpose']!r}, not 'batch'",
                           param="input_file_id")
        content = await self._run_long(self.store.file_content, request.input_file_id) or b""
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
        if not await self._run_long(self.store.create_batch, batch, lines, ids, chunks, queue.tenant_quota_lines):
            raise ApiError(429, f"tenant {tenant!r} has more than {queue.tenant_quota_lines} lines queued; "
                                "retry when some batches finish", kind="rate_limit_error", code="queue_full",
                           headers={"Retry-After": "60"})
        try:  # in groups, each within the timeout (an enqueue costs about 1 ms on loopback, 3 round trips)
            for first in range(0, chunks, CHUNKS_PER_CALL):
                group = range(first, min(chunks, first + CHUNKS_PER_CALL))
                await self._run_long(self.tasks.route_chunks, batch["id"], group)
        except (redis.RedisError, ApiError) as error:  # the batch is stored: a client's retry would make another
            log.warning("batch %s stored, its chunks not all queued (%s); the stalled-batch sweep queues them",
                        batch["id"], error)
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
        await self._run_long(self.tasks.finish_job, job["id"])

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
                        await self._run_long(self.tasks.route_chunks, batch_id, [chunk])
            except Exception as error:  # the sweep outlives every fault
                log.warning("stalled-batch sweep skipped: %s", error)
