"""The task consumer: a Ray Serve ``@task_consumer`` deployment (Celery on Redis) that routes batch
job chunks and finishes progressive answers through the same core router and model pools.

Celery's adapter runs synchronous handlers on worker threads, acknowledges a task only when it
finishes and requeues it when the replica dies (``acks_late``, ``reject_on_worker_lost``), so a
task may run twice: every write it makes is idempotent (see ``BatchStore``). The router is async,
so the handlers submit their routing to an event loop the replica keeps on its own thread. A
progressive job whose task Celery gives up on (``queue.max_retries`` spent) ends with its provisional
answer as the final one, marked degraded, rather than staying ``running``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import httpx
import orjson
from celery.signals import task_failure
from ray.serve.task_consumer import task_handler

from cascade.engines.base import InvalidInputError, PromptTooLongError
from cascade.errors import public_message
from cascade.factory import build_router
from cascade.router import AllTiersFailedError, TrailCheckpoint
from cascade.schemas import Query, RoutedAnswer
from cascade.telemetry import configure_from_env
from services.batch.schema import error_line, given_up, output_line, parse_line
from services.batch.store import TERMINAL, BatchStore
from services.openai_api import response_of
from services.pool_engine import tier_engines
from services.replica import limit_threads
from services.request_ids import RequestIds, batch_line_id
from services.settings import CascadeSettings
from services.tenants import TenantDirectory

log = logging.getLogger(__name__)
T = TypeVar("T")
CLOSE_TIMEOUT_S = 10.0  # the longest shutdown waits for buffered decision records to reach Redis


def signature(secret: str, body: bytes) -> str:
    """The ``X-Cascade-Signature`` header of a webhook body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class RoutingConsumer:
    """Handlers ``route_chunk`` (batch jobs) and ``finish_job`` (progressive answers)."""

    def __init__(self, settings: dict[str, Any], pools: dict[str, Any]) -> None:
        limit_threads()
        configure_from_env()
        self.settings = CascadeSettings(**settings)
        assert self.settings.redis_url is not None, "the task queue needs redis_url"
        self.queue = self.settings.queue
        engines = tier_engines(self.settings.tiers, pools)
        no_cache = self.settings.cache.model_copy(update={"enabled": False})
        self.router = build_router(self.settings.for_router().model_copy(update={"cache": no_cache}),
                                   with_redis=True, engines=engines)
        self.store = BatchStore(self.settings.redis_url, retention_s=self.queue.retention_s)
        self.tenants = TenantDirectory(self.settings.server, [t.name for t in self.settings.tiers])
        self.request_ids = RequestIds.of(self.settings)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="consumer-loop", daemon=True).start()
        self._deliveries: set[concurrent.futures.Future[None]] = set()
        task_failure.connect(self._task_failed, dispatch_uid=f"cascade-consumer-{id(self)}")

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout_s)

    async def _route(self, queries: Sequence[Query]) -> list[RoutedAnswer | Exception]:
        """Route a chunk in throughput mode: the first tier and every escalation tier as one batch each;
        an answer or the error, per query."""
        outcomes = await self.router.answer(queries, "throughput")
        return [o.answer if o.answer is not None else o.error or RuntimeError("no answer") for o in outcomes]

    @task_handler(name="route_chunk")
    def route_chunk(self, batch_id: str, chunk: int) -> int:
        """Route lines ``chunk * chunk_size`` onwards of a batch; returns how many results were new."""
        size = self.queue.chunk_size
        view = self.store.chunk(batch_id, chunk * size, (chunk + 1) * size)
        batch = view.batch
        if batch is None or batch["status"] in TERMINAL:
            self.store.finalize(batch_id)  # final already: only takes it off the active batches
            return 0
        results: dict[str, bytes] = {}
        errors: dict[str, bytes] = {}
        if not view.cancelled:
            todo = [(line, c) for line, c in zip(view.lines, view.custom_ids, strict=True) if c not in view.answered]
            results, errors = self._route_lines(batch, todo)
        written, last = self.store.finish_chunk(batch_id, chunk, batch["tenant"], len(view.lines), results, errors)
        if last:
            self.store.finalize(batch_id)
        return written

    def _route_lines(self, batch: dict[str, Any],
                     lines: list[tuple[bytes, str]]) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """Each line's output line, or its error line; lines that keep failing are dead-lettered."""
        caller = self.tenants.caller_of(batch["tenant"])
        parsed = [parse_line(line, cid, batch["endpoint"], caller, self.tenants, self.settings) for line, cid in lines]
        errors = {p.custom_id: error_line(p.custom_id, p.error, p.status) for p in parsed if p.error is not None}
        pending = [p for p in parsed if p.query is not None]
        for line in pending:
            if line.query is not None:
                line.query.id = batch_line_id(self.request_ids, line.query.tenant, batch, line.custom_id)
        results: dict[str, bytes] = {}
        for attempt in range(self.queue.route_attempts):
            if not pending:
                break
            outcomes = self._run(self._route([p.query for p in pending if p.query is not None]))
            retry = []
            for line, outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, RoutedAnswer):
                    results[line.custom_id] = output_line(line.custom_id, outcome, batch["endpoint"])
                elif isinstance(outcome, PromptTooLongError):
                    errors[line.custom_id] = error_line(line.custom_id, {
                        "code": "context_length_exceeded", "param": "body", "message":
                        f"prompt of {outcome.prompt_tokens} tokens plus max_tokens {outcome.max_tokens} exceeds "
                        f"the model's context window of {outcome.context_window} tokens"}, 413)
                elif isinstance(outcome, InvalidInputError):
                    errors[line.custom_id] = error_line(line.custom_id, {"code": "invalid_input", "param": "body",
                                                                         "message": outcome.reason}, 400)
                else:
                    retry.append((line, outcome))
            pending = [line for line, _ in retry]
            if retry and attempt + 1 < self.queue.route_attempts:
                time.sleep(self.queue.retry_backoff_s * 2**attempt)
            elif retry:
                for line, outcome in retry:
                    reason = public_message(outcome)
                    log.warning("batch %s line %s dead-lettered: %r", batch["id"], line.custom_id, outcome)
                    self.store.dead_letter(batch["id"], line.custom_id, reason)
                    status = 503 if isinstance(outcome, AllTiersFailedError) else 500
                    message = f"failed {self.queue.route_attempts} times: {reason}"
                    errors[line.custom_id] = error_line(line.custom_id, {"code": "dead_letter", "message": message},
                                                        status)
        return results, errors

    @task_handler(name="finish_job")
    def finish_job(self, job_id: str) -> bool:
        """Take a progressive request's query on from its next tier; deliver the final answer once."""
        job = self.store.job(job_id)
        if job is None or job.get("status") == "completed":
            return False
        [outcome] = self._run(self.router.answer([TrailCheckpoint.model_validate(job["trail"])]))
        if outcome.answer is None:
            raise outcome.error or RuntimeError(f"job {job_id} has no answer")  # the task queue retries it
        answer = outcome.answer
        body = response_of(job.get("shape", "chat"), answer)
        if not self.store.complete_job(job_id, {"answer": answer.answer, "response": body}):
            return False
        self._webhook(job["tenant"], job_id, body)
        return True

    def _task_failed(self, sender: Any = None, args: Sequence[Any] | None = None,
                     exception: BaseException | None = None, **_: Any) -> None:
        """Celery's ``task_failure`` (a task's retries are spent): a ``finish_job`` task's job ends."""
        if getattr(sender, "name", None) != "finish_job" or not args:
            return
        try:
            self.give_up_job(str(args[0]), exception or RuntimeError("unknown error"))
        except Exception as error:
            log.error("job %s: its task failed for good and the job could not be ended either: %r", args[0], error)

    def give_up_job(self, job_id: str, error: BaseException) -> bool:
        """End a job whose finishing failed ``queue.max_retries + 1`` times with its provisional answer,
        marked degraded, and deliver it as the final one; False if the job is done or gone."""
        job = self.store.job(job_id)
        if job is None or job.get("status") == "completed":
            return False
        tries = self.queue.max_retries + 1
        log.error("job %s: finishing failed %d times (%r); its provisional answer is final", job_id, tries, error)
        response = given_up(job.get("provisional") or {}, tries, error)
        choice = (response.get("choices") or [{}])[0]
        text = choice["text"] if "text" in choice else (choice.get("message") or {}).get("content")
        if not self.store.complete_job(job_id, {"answer": text, "response": response}):
            return False
        self._webhook(job["tenant"], job_id, response)
        return True

    def _webhook(self, tenant: str, job_id: str, response: dict[str, Any]) -> None:
        """Deliver the final answer to the tenant's webhook off the handler's path: the task is done
        once the job is stored; delivery runs on the replica's loop with a timeout and retries."""
        config = self.settings.server.tenants.get(tenant)
        if config is None or not config.webhook_url:
            return
        body = orjson.dumps({"job_id": job_id, "status": "completed", "response": response})
        headers = {"Content-Type": "application/json", "X-Cascade-Job": job_id}
        if config.webhook_secret:
            headers["X-Cascade-Signature"] = signature(config.webhook_secret, body)
        delivery = asyncio.run_coroutine_threadsafe(self._deliver(config.webhook_url, job_id, body, headers),
                                                    self.loop)
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, job_id: str, body: bytes, headers: dict[str, str]) -> None:
        queue = self.queue
        async with httpx.AsyncClient(timeout=queue.webhook_timeout_s) as client:
            for attempt in range(queue.webhook_attempts):
                try:
                    (await client.post(url, content=body, headers=headers)).raise_for_status()
                    return
                except httpx.HTTPError as error:
                    log.warning("webhook for job %s failed (attempt %d of %d): %s", job_id, attempt + 1,
                                queue.webhook_attempts, error)
                    await asyncio.sleep(0.5 * 2**attempt)
        log.error("webhook for job %s not delivered after %d attempts", job_id, queue.webhook_attempts)

    def __del__(self) -> None:
        """On shutdown, write the decision records the feedback log still holds (buffered while Redis
        was down), within ``CLOSE_TIMEOUT_S``, then stop the loop. Engines stay open: a chunk still
        routing keeps them until its task ends or is redelivered."""
        if not self.loop.is_running():
            return
        try:
            if self.router.feedback is not None:
                self._run(self.router.feedback.flush(), CLOSE_TIMEOUT_S)
        except Exception as error:
            log.error("consumer shutdown: buffered decision records not written: %r", error)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
