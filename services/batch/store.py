"""Files, batch jobs, their results and progressive-answer jobs, kept in Redis.

Writes that a retried task may repeat are idempotent: a line's result is written with ``HSETNX``
keyed by ``custom_id`` (exactly once, however often its chunk runs), a chunk counts as done with
``SADD`` of its index, and a tenant's queued-work counter moves only when that ``SADD`` is new and
the batch is not final yet.
A batch's ``custom_id`` list is stored beside its lines at creation, so no later step parses a line
for it; a chunk reads what it needs in two round trips and writes its outcome in one script.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from services.batch.schema import custom_ids as parse_custom_ids

PREFIX = "cascade:batchapi"
TERMINAL = {"completed", "failed", "cancelled", "expired"}
SOCKET_TIMEOUT_S = 10.0  # the longest a store call waits for Redis to read or answer
JOB_TTL_S = 7 * 24 * 3600  # how long a progressive job and its final answer are kept
RETENTION_S = 30 * 24 * 3600  # how long a file, and a batch once final, are kept (queue.retention_s)
DEAD_LETTERS_KEPT = 100_000  # the dead-letter list's latest entries; older ones are in the error files
# no use once a batch is final: its counts are in its record, its outcomes in its files
SPENT_BATCH_KEYS = ("lines", "ids", "chunks", "progress_at", "done", "requeue", "results", "errors", "cancel")


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def is_id(kind: str, value: str) -> bool:
    """Whether ``value`` has the shape of a ``new_id(kind)``: any other value names nothing, and is never
    made into a key (a ``:`` in it would reach another record's keys)."""
    return len(value) == len(kind) + 25 and value.startswith(f"{kind}-") and all(
        c in "0123456789abcdef" for c in value[len(kind) + 1:])


# A chunk's outcome, atomically: each line's result or error once (HSETNX; a line with an outcome in
# the other hash, from another run of the chunk, keeps it), the chunk counted done once (SADD), the
# tenant's queued lines and the batch's progress time moved only then; returns how many outcomes were
# new and whether every chunk of the batch is done. A batch already final (its chunk count dropped)
# takes nothing: a late run of one of its chunks counts nowhere.
FINISH_CHUNK = """
if redis.call('EXISTS', KEYS[6]) == 0 then return {0, 1} end
local written, i, results = 0, 5, tonumber(ARGV[4])
local function once(into, other)
  if redis.call('HEXISTS', other, ARGV[i]) == 0 then
    written = written + redis.call('HSETNX', into, ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
for _ = 1, results do once(KEYS[1], KEYS[2]) end
while i < #ARGV do once(KEYS[2], KEYS[1]) end
if redis.call('SADD', KEYS[3], ARGV[1]) == 1 then
  redis.call('DECRBY', KEYS[4], ARGV[2])
  redis.call('SET', KEYS[5], ARGV[3])
end
local total = tonumber(redis.call('GET', KEYS[6]) or '0')
if redis.call('SCARD', KEYS[3]) >= total then return {written, 1} end
return {written, 0}
"""


# A new batch made live, atomically, once its lines and ids are written (as lists that expire): refused
# (0) if the tenant's queued lines would pass the quota; else counted there, its record and chunk count
# stored, its lists kept and the batch made active (1). One step, so no fault between two writes leaves
# a count without its batch; the lines go before it, in commands of their own, so that Redis, which
# runs a script to its end before anything else, is never held for a large batch's writes.
ACTIVATE_BATCH = """
local count = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') + count > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], count)
redis.call('SET', KEYS[2], ARGV[3])
redis.call('PERSIST', KEYS[3])
redis.call('PERSIST', KEYS[4])
redis.call('SET', KEYS[5], ARGV[5])
redis.call('SET', KEYS[6], ARGV[6])
redis.call('SADD', KEYS[7], ARGV[4])
return 1
"""
LINES_PER_PUSH = 1000  # a batch's lines and ids are written this many per command
UNCLAIMED_LIST_TTL_S = 3600  # lines whose batch was never made live (refused, or a fault) expire


# An upload within its tenant's quota, atomically: the tenant's files past their expiry (up to 1,000 a
# call) are taken off its running total, then, within the quota, the file is stored to expire with
# its entry in the tenant's accounts (-1); beyond it, nothing is written and the bytes in use come
# back. A file is charged at least MIN_FILE_CHARGE (its keys and accounts cost that much), and an
# account key's expiry is only ever lengthened.
SAVE_UPLOAD = """
local now, ttl, quota, charge = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(gone) do
  redis.call('DECRBY', KEYS[5], tonumber(redis.call('HGET', KEYS[2], id) or '0'))
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
end
local used = tonumber(redis.call('GET', KEYS[5]) or '0')
if used + charge > quota then return used end
redis.call('SET', KEYS[3], ARGV[6], 'EX', ttl)
redis.call('SET', KEYS[4], ARGV[7], 'EX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[5])
redis.call('HSET', KEYS[2], ARGV[5], charge)
redis.call('INCRBY', KEYS[5], charge)
for _, account in ipairs({KEYS[1], KEYS[2], KEYS[5]}) do
  if redis.call('TTL', account) < ttl then redis.call('EXPIRE', account, ttl) end
end
return -1
"""
MIN_FILE_CHARGE = 1024  # bytes an upload counts against its tenant's quota at the least


class StorageQuotaError(Exception):
    """An upload that would take its tenant past ``queue.tenant_quota_bytes``."""

    def __init__(self, used: int, quota: int) -> None:
        super().__init__(f"{used} bytes stored, quota {quota}")
        self.used, self.quota = used, quota


# A job's final state once: the marker (SET NX) and the job in one step, so a fault between them
# never leaves a marked job that no later try can complete.
COMPLETE_JOB = """
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
return 1
"""


@dataclass(frozen=True)
class ChunkView:
    """What routing one chunk reads: the batch, its lines and their ids, and which are answered."""

    batch: dict[str, Any] | None
    lines: list[bytes]
    custom_ids: list[str]
    cancelled: bool
    answered: set[str]


@dataclass
class BatchStore:
    """Synchronous Redis access (the Celery handlers are synchronous; the ingress calls it in a thread)."""

    redis_url: str
    socket_timeout_s: float = SOCKET_TIMEOUT_S
    retention_s: int = RETENTION_S

    def __post_init__(self) -> None:
        # Any: redis-py's stubs mix sync and async
        self.client: Any = redis.Redis.from_url(self.redis_url, socket_timeout=self.socket_timeout_s)
        self._finish_chunk = self.client.register_script(FINISH_CHUNK)
        self._activate_batch = self.client.register_script(ACTIVATE_BATCH)
        self._complete_job = self.client.register_script(COMPLETE_JOB)
        self._save_upload = self.client.register_script(SAVE_UPLOAD)

    def ping(self) -> bool:
        return bool(self.client.ping())

    def _key(self, *parts: str) -> str:
        return ":".join((PREFIX, *parts))

    def _file_meta(self, tenant: str, filename: str, purpose: str, content: bytes, file_id: str) -> dict[str, Any]:
        now = int(time.time())
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": now,
                "expires_at": now + self.retention_s, "filename": filename, "purpose": purpose,
                "status": "processed", "tenant": tenant}

    def _write_file(self, pipe: Any, tenant: str, filename: str, purpose: str, content: bytes,
                    file_id: str) -> dict[str, Any]:
        """Queue a file's writes on ``pipe``, to expire after ``retention_s``; its metadata."""
        meta = self._file_meta(tenant, filename, purpose, content, file_id)
        pipe.set(self._key("file", file_id), orjson.dumps(meta), ex=self.retention_s)
        pipe.set(self._key("file", file_id, "content"), content, ex=self.retention_s)
        return meta

    def save_upload(self, tenant: str, filename: str, purpose: str, content: bytes, quota: int) -> dict[str, Any]:
        """Store a tenant's upload for ``retention_s`` if its files still stored stay within ``quota``
        bytes with it (each charged at least ``MIN_FILE_CHARGE``); else ``StorageQuotaError``, nothing
        written."""
        meta = self._file_meta(tenant, filename, purpose, content, new_id("file"))
        keys = [self._key("stored-expiry", tenant), self._key("stored-charge", tenant), self._key("file", meta["id"]),
                self._key("file", meta["id"], "content"), self._key("stored-total", tenant)]
        charge = max(len(content), MIN_FILE_CHARGE)
        used = int(self._save_upload(keys=keys, args=[int(time.time()), self.retention_s, quota, charge,
                                                      meta["id"], orjson.dumps(meta), content]))
        if used >= 0:
            raise StorageQuotaError(used, quota)
        return meta

    def file(self, file_id: str) -> dict[str, Any] | None:
        raw = self.client.get(self._key("file", file_id))
        return orjson.loads(raw) if raw else None

    def file_content(self, file_id: str) -> bytes | None:
        raw = self.client.get(self._key("file", file_id, "content"))
        return bytes(raw) if raw is not None else None

    def create_batch(self, batch: dict[str, Any], lines: list[bytes], custom_ids: list[str], chunks: int,
                     quota: int) -> bool:
        """Store the batch, its lines and their ``custom_id``s and count its lines as the tenant's queued
        work; False (nothing counted, the lines left to expire) if the tenant's queued lines would exceed
        ``quota``. The lines are written first; one atomic script then makes the batch live."""
        if len(custom_ids) != len(lines):
            raise ValueError(f"{len(custom_ids)} custom_ids for {len(lines)} lines")
        lists = [self._key("batch", batch["id"], "lines"), self._key("batch", batch["id"], "ids")]
        pipe = self.client.pipeline(transaction=False)
        columns: list[tuple[str, Sequence[bytes | str]]] = [(lists[0], lines), (lists[1], custom_ids)]
        for key, values in columns:
            for start in range(0, len(values), LINES_PER_PUSH):
                pipe.rpush(key, *values[start:start + LINES_PER_PUSH])
            pipe.expire(key, UNCLAIMED_LIST_TTL_S)
        pipe.execute()
        keys = [self._key("queued", batch["tenant"]), self._key("batch", batch["id"]), *lists,
                self._key("batch", batch["id"], "chunks"), self._key("batch", batch["id"], "progress_at"),
                self._key("active")]
        live = bool(self._activate_batch(keys=keys, args=[len(lines), quota, orjson.dumps(batch), batch["id"], chunks,
                                                           time.time()]))
        if not live:
            self.client.delete(*lists)
        return live

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.client.get(self._key("batch", batch_id))
        if not raw:
            return None
        batch = orjson.loads(raw)
        counts = batch["request_counts"]
        if batch.get("status") in TERMINAL and counts.get("completed", 0) + counts.get("failed", 0) > 0:
            return dict(batch)  # its counts written when it became final, its outcomes dropped
        results, errors = self.client.hlen(self._key("batch", batch_id, "results")), self.client.hlen(
            self._key("batch", batch_id, "errors"))
        batch["request_counts"] = {"total": batch["request_counts"]["total"], "completed": int(results),
                                   "failed": int(errors)}
        return dict(batch)

    def update_batch(self, batch_id: str, *, unless_final: bool = False, **fields: Any) -> bool:
        """Set ``fields`` of a stored batch, read and written as one step (WATCH: a write that comes in
        between makes it read again, so neither loses the other's fields); with ``unless_final``, not
        once the batch has a final status. Whether it was written."""
        key = self._key("batch", batch_id)

        def update(pipe: Any) -> bool:
            raw = pipe.get(key)
            batch = orjson.loads(raw) if raw else None
            if batch is None or (unless_final and batch.get("status") in TERMINAL):
                return False
            pipe.multi()
            pipe.set(key, orjson.dumps({**batch, **fields}))
            return True

        return bool(self.client.transaction(update, key, value_from_callable=True))

    def lines(self, batch_id: str, start: int, stop: int) -> list[bytes]:
        return [bytes(x) for x in self.client.lrange(self._key("batch", batch_id, "lines"), start, stop - 1)]

    def custom_ids(self, batch_id: str, total: int) -> list[str]:
        """The ``custom_id`` of every line of a batch of ``total`` lines."""
        ids = [x.decode() for x in self.client.lrange(self._key("batch", batch_id, "ids"), 0, total - 1)]
        return ids if len(ids) == total else parse_custom_ids(self.lines(batch_id, 0, total))

    def chunk(self, batch_id: str, start: int, stop: int) -> ChunkView:
        """Lines ``start`` to ``stop`` of a batch, with what routing them needs, in two round trips."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._key("batch", batch_id))
        pipe.lrange(self._key("batch", batch_id, "lines"), start, stop - 1)
        pipe.lrange(self._key("batch", batch_id, "ids"), start, stop - 1)
        pipe.exists(self._key("batch", batch_id, "cancel"))
        raw, lines, ids, cancelled = pipe.execute()
        lines = [bytes(x) for x in lines]
        custom_ids = [x.decode() for x in ids]
        if len(custom_ids) != len(lines):  # a batch created before the ids were stored
            custom_ids = parse_custom_ids(lines, first=start)
        answered: set[str] = set()
        if custom_ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self._key("batch", batch_id, "results"), custom_ids)
            pipe.hmget(self._key("batch", batch_id, "errors"), custom_ids)
            results, errors = pipe.execute()
            answered = {c for c, result, error in zip(custom_ids, results, errors, strict=True)
                        if result is not None or error is not None}
        return ChunkView(orjson.loads(raw) if raw else None, lines, custom_ids,
                         bool(cancelled), answered)

    def finish_chunk(self, batch_id: str, chunk: int, tenant: str, lines: int, results: dict[str, bytes],
                     errors: dict[str, bytes]) -> tuple[int, bool]:
        """Write each line's outcome unless one is there already and count the chunk done, in one
        atomic script; returns how many outcomes were new and whether this was the last chunk."""
        keys = [self._key("batch", batch_id, name) for name in ("results", "errors", "done")]
        keys += [self._key("queued", tenant), self._key("batch", batch_id, "progress_at"),
                 self._key("batch", batch_id, "chunks")]
        pairs = [x for outcome in (results, errors) for item in outcome.items() for x in item]
        written, last = self._finish_chunk(keys=keys, args=[chunk, lines, time.time(), len(results), *pairs])
        return int(written), bool(last)

    def cancel(self, batch_id: str) -> None:
        self.client.set(self._key("batch", batch_id, "cancel"), 1, ex=self.retention_s)

    def cancelled(self, batch_id: str) -> bool:
        return bool(self.client.exists(self._key("batch", batch_id, "cancel")))

    def outcomes(self, batch_id: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
        results = self.client.hgetall(self._key("batch", batch_id, "results"))
        errors = self.client.hgetall(self._key("batch", batch_id, "errors"))
        return ({k.decode(): bytes(v) for k, v in results.items()}, {k.decode(): bytes(v) for k, v in errors.items()})

    def dead_letter(self, batch_id: str, custom_id: str, reason: str) -> None:
        """Log a line that kept failing on the dead-letter list, which keeps the latest ``DEAD_LETTERS_KEPT``."""
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self._key("dead-letters"), orjson.dumps(
            {"batch_id": batch_id, "custom_id": custom_id, "reason": reason, "at": time.time()}))
        pipe.ltrim(self._key("dead-letters"), -DEAD_LETTERS_KEPT, -1)
        pipe.execute()

    def finalize(self, batch_id: str) -> bool:
        """Write a finished batch's output and error files in input order and give it its final status and
        counts, keep both for ``retention_s`` and drop the rest (its copy of the lines, its outcomes,
        its chunk state), in one transaction that a finalization finishing first aborts (its files are
        never overwritten); False if the batch had a final status already. The files' ids derive from
        the batch's, and the batch stays active until then: a fault or a crash part-way leaves it to the
        stalled-batch sweep, which runs this again."""
        key = self._key("batch", batch_id)
        batch = self.batch(batch_id)
        if batch is None or batch.get("status") in TERMINAL:
            self.client.srem(self._key("active"), batch_id)
            return False
        results, errors = self.outcomes(batch_id)
        order = self.custom_ids(batch_id, batch["request_counts"]["total"])
        files = {"output": b"".join(results[c] + b"\n" for c in order if c in results),
                 "errors": b"".join(errors[c] + b"\n" for c in order if c in errors)}
        now = int(time.time())
        final = ({"status": "cancelled", "cancelled_at": now} if self.cancelled(batch_id)
                 else {"status": "completed", "completed_at": now})

        def write(pipe: Any) -> bool:
            raw = pipe.get(key)
            stored = orjson.loads(raw) if raw else None
            if stored is None or stored.get("status") in TERMINAL:
                return False
            pipe.multi()
            update: dict[str, Any] = {"finalizing_at": now, **final}
            for kind, content in files.items():
                if content:
                    file_id = "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]
                    update["output_file_id" if kind == "output" else "error_file_id"] = self._write_file(
                        pipe, batch["tenant"], f"{batch_id}_{kind}.jsonl", "batch_output", content, file_id)["id"]
            counts = {"total": batch["request_counts"]["total"], "completed": len(results), "failed": len(errors)}
            pipe.set(key, orjson.dumps({**stored, **update, "request_counts": counts}), ex=self.retention_s)
            pipe.delete(*(self._key("batch", batch_id, name) for name in SPENT_BATCH_KEYS))
            return True

        written = bool(self.client.transaction(write, key, value_from_callable=True))
        self.client.srem(self._key("active"), batch_id)
        return written

    def active(self) -> list[str]:
        """Batches not finalized yet."""
        return sorted(x.decode() for x in self.client.smembers(self._key("active")))

    def stalled_chunks(self, batch_id: str, after_s: float) -> list[int]:
        """Chunks not done of a batch that has made no progress for ``after_s`` seconds, claimed for
        re-queueing at most once per ``after_s`` (by whichever replica asks first); else none. A batch
        whose chunks are all done but that is still active was not finalized (a fault or a crash in
        between): its first chunk, whose run finds every line answered and finalizes it."""
        progress = self.client.get(self._key("batch", batch_id, "progress_at"))
        if progress is None or time.time() - float(progress) < after_s:
            return []
        if not self.client.set(self._key("batch", batch_id, "requeue"), 1, nx=True, ex=max(1, int(after_s))):
            return []
        total = int(self.client.get(self._key("batch", batch_id, "chunks")) or 0)
        done = {int(x) for x in self.client.smembers(self._key("batch", batch_id, "done"))}
        return [chunk for chunk in range(total) if chunk not in done] or [0]

    def save_job(self, job: dict[str, Any]) -> None:
        self.client.set(self._key("job", job["id"]), orjson.dumps(job), ex=JOB_TTL_S)

    def job(self, job_id: str) -> dict[str, Any] | None:
        raw = self.client.get(self._key("job", job_id))
        return orjson.loads(raw) if raw else None

    def complete_job(self, job_id: str, result: dict[str, Any]) -> bool:
        """Store a job's final answer once, with its marker in one step; False if it was already there."""
        job = self.job(job_id) or {"id": job_id}
        final = {**job, "status": "completed", "completed_at": int(time.time()), **result}
        return bool(self._complete_job(keys=[self._key("job", job_id, "done"), self._key("job", job_id)],
                                       args=[JOB_TTL_S, orjson.dumps(final)]))

    def close(self) -> None:
        self.client.close()
