"""The router ingress: a FastAPI app on Ray Serve that batches concurrent requests into the core router.

Concurrent requests are grouped by ``@serve.batch``; ``Router.begin`` looks the group up in the cache
and sends the misses to the small-model pool in one call, deciding for the whole group with arrays.
Accepted answers return at once; each escalated request then awaits its own ``Router.finish``, so
no request waits for another's escalation. Cache stores and feedback appends are batched the same
way, off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar, cast

import orjson
import redis
from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry.propagate import extract
from pydantic import BaseModel, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from cascade.breaker import RedisFaultError
from cascade.engines.base import InvalidInputError, PromptTooLongError
from cascade.errors import public_message
from cascade.factory import build_router
from cascade.feedback import FeedbackLog, outcome_record
from cascade.router import AllTiersFailedError, TierNotAllowedError, Trail, TrailCheckpoint, UnknownTierError
from cascade.schemas import Query, RoutedAnswer
from cascade.telemetry import configure_from_env, count_refused_feedback
from services.batch.api import BatchApi, public
from services.batch.schema import BatchCreate
from services.batch.store import new_id
from services.limits import BODY_LIMITS, BodyLimitMiddleware, RateLimiter
from services.openai_api import (
    DONE,
    ROUTER_MODEL,
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    Shape,
    chat_queries,
    chat_response,
    chat_stream,
    check_prompt_size,
    completion_queries,
    completion_response,
    completion_stream,
    error_responses,
    job_event,
    response_of,
    routing_object,
)
from services.pool_engine import tier_engines, unwrap
from services.recorder import TrailRecorder
from services.replica import freeze_start_up_heap, limit_threads
from services.request_ids import RequestIds
from services.settings import CascadeSettings
from services.tenants import Caller, TenantDirectory

log = logging.getLogger(__name__)

api = FastAPI(title="cascade router", description="OpenAI-compatible LLM router: small model first, escalate on doubt")
api.add_middleware(BodyLimitMiddleware)  # reads services.limits.BODY_LIMITS, which each replica sets
OWNERS_KEPT = 100_000  # recent request ids and their tenants kept in memory for feedback checks
COMPLETION_ERRORS = error_responses(400, 401, 403, 404, 413, 422, 429, 503)
STORE_ERRORS = error_responses(401, 404, 413, 422, 503)


def _json(body: dict[str, Any]) -> Response:
    """A JSON response serialized with orjson."""
    return Response(orjson.dumps(body), media_type="application/json")


def _field(location: Sequence[int | str]) -> str:
    """A validation error's location as a dotted field name, without pydantic's union-member tags."""
    parts = [str(p) for p in location if p != "body" and not (isinstance(p, str) and (
        "[" in p or p in {"str", "int", "float", "bool", "list", "dict", "none"}))]
    return ".".join(parts) or "body"


@api.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@api.exception_handler(redis.RedisError)
async def _store_down(request: Request, error: redis.RedisError) -> JSONResponse:
    """503; ``Retry-After`` is what is left of the store's breaker's cool-down (10 s without a breaker)."""
    message = f"the batch and job store (Redis) is unreachable: {type(error).__name__}"
    wait = math.ceil(error.retry_after_s) if isinstance(error, RedisFaultError) else 10
    return JSONResponse(ApiError(503, message, kind="service_unavailable").body(), status_code=503,
                        headers={"Retry-After": str(max(1, wait))})


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (a body it cannot decode, an unknown path or method) and a body that grew past
    the limit while it was received (``BodyTooLargeError``), in the error shape."""
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    code = "request_too_large" if error.status_code == 413 else None
    return JSONResponse(ApiError(error.status_code, str(error.detail), kind=kind, code=code).body(),
                        status_code=error.status_code, headers=dict(error.headers or {}))


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = error.errors()
    message = "; ".join(f"{_field(p.get('loc', ()))}: {p.get('msg', 'invalid')}" for p in problems[:5])
    param = _field(problems[0].get("loc", ())) if problems else None
    return JSONResponse(ApiError(422, message or "invalid request", param=param).body(), status_code=422)


class RouterIngress:
    """Serves the OpenAI API over the core router, whose tiers are the model pools' handles.

    ``controller`` and ``consumer`` are the threshold-controller and task-consumer deployments when
    configured: bound here so that Serve deploys them with the app (the controller's state shows in
    /healthz; the consumer is reached through the Redis queue, not its handle)."""

    async def __init__(self, settings: dict[str, Any], pools: dict[str, Any],  # type: ignore[misc]
                       controller: Any = None, consumer: Any = None) -> None:
        limit_threads()
        configure_from_env()
        self.settings = CascadeSettings(**settings)
        BODY_LIMITS.default = self.settings.server.max_body_bytes
        BODY_LIMITS.uploads = self.settings.server.max_upload_bytes
        tiers = self.settings.tiers
        self.pools = tier_engines(tiers, pools)
        await asyncio.gather(*(engine.start() for engine in self.pools.values()))
        self.router = build_router(self.settings.for_router(), with_redis=self.settings.server.use_redis,
                                   engines=self.pools)
        self.controller = controller
        self.tenants = TenantDirectory(self.settings.server, [t.name for t in tiers])
        server = self.settings.server
        self._begin: Callable[[Query], Awaitable[Trail]] = serve.batch(
            max_batch_size=server.max_batch_size, batch_wait_timeout_s=server.batch_wait_timeout_s,
            max_concurrent_batches=server.batches_in_flight())(self.router.begin)
        self._recorder = TrailRecorder(self.router.record)
        self._in_flight = 0
        redis_url = self.settings.redis_url if server.use_redis and self.settings.queue.enabled else None
        self.batches = BatchApi(self.settings, redis_url) if redis_url else None
        self._sweeper = asyncio.create_task(self.batches.sweep_stalled_batches()) if self.batches else None
        self._records = self.router.cache is not None or self.router.feedback is not None
        self.breaker = self.router.feedback.breaker if self.router.feedback is not None else None
        limited = server.rate_limit_per_minute is not None or any(
            t.rate_limit_per_minute is not None for t in server.tenants.values())
        self.rate = RateLimiter(self.settings.redis_url, self.breaker) if (
            limited and self.breaker is not None and self.settings.redis_url) else None
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._purging = asyncio.Lock()  # cache purges, one at a time
        self.request_ids = RequestIds.of(self.settings)
        self._owner_keys = self.router.feedback is not None and self.router.feedback.config.owner_keys is not False
        freeze_start_up_heap(server.gc_threshold)

    async def _admit(self, tenant: str) -> None:
        """429 with ``Retry-After`` when the tenant is over its request rate (counted in Redis): completions,
        uploads and batch creations, one request each."""
        if self.rate is None:
            return
        config = self.settings.server.tenants.get(tenant)
        limit = (config.rate_limit_per_minute if config is not None else None) or \
            self.settings.server.rate_limit_per_minute
        if limit is None:
            return
        wait = await self.rate.retry_after(tenant, limit)
        if wait is not None:
            raise ApiError(429, f"tenant {tenant!r} is over its limit of {limit} requests per minute; "
                                f"retry in {wait} s", kind="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(wait)})

    def _remember_owner(self, request_id: str, tenant: str) -> None:
        self._owners[request_id] = tenant
        if len(self._owners) > OWNERS_KEPT:
            self._owners.popitem(last=False)

    async def route(self, queries: list[Query], headers: Mapping[str, str], progressive: bool = False,
                    shape: Shape = "chat") -> tuple[list[RoutedAnswer], list[str | None]]:
        """Route a request's queries: batched first pass, then each its own escalation (or, when
        ``progressive``, a job on the task queue while the small answer returns as provisional);
        traced as a continuation of the caller's trace (W3C ``traceparent``), if any. Returns the
        answers and, per answer, its job id (None where the answer is final)."""
        limit = self.settings.server.max_prompt_chars
        param = "messages" if queries and queries[0].messages else "prompt"
        for query in queries:
            check_prompt_size(query, limit, param)
            if self.request_ids is not None:
                query.id = self.request_ids.new(query.tenant)
        if progressive:
            self._batches()
        outcomes = await self.router.answer(queries, "progressive" if progressive else "interactive",
                                            begin=self._first_pass, record=self._record_later,
                                            trace_parent=extract(dict(headers)))
        for outcome in outcomes:
            if outcome.error is not None:
                raise self._client_error(outcome.error, param, [q.id for q in queries]) from None
        answers = [o.answer for o in outcomes if o.answer is not None]
        jobs: list[str | None] = [None] * len(answers)
        for i, outcome in enumerate(outcomes):
            if outcome.rest is not None and outcome.answer is not None:
                jobs[i], answers[i] = await self._start_job(outcome.answer, outcome.rest, shape, param)
        if self.request_ids is None:
            for answer in answers:
                self._remember_owner(answer.request_id, answer.tenant)
        return answers, jobs

    async def _first_pass(self, queries: list[Query]) -> list[Trail]:
        """The router's first pass, batched with other requests' queries unless this one is alone."""
        self._in_flight += 1
        try:
            if self._in_flight == 1 and len(queries) == 1:
                return await self.router.begin(queries)
            return list(await asyncio.gather(*map(self._begin, queries)))
        finally:
            self._in_flight -= 1

    def _record_later(self, trails: list[Trail]) -> None:
        """Record finished trails off the request's path, batched with other requests' records."""
        if self._records:
            self._recorder.add(trails)

    @staticmethod
    def _client_error(error: Exception, param: str, request_ids: list[str]) -> ApiError:
        """The answer to a request the router could not answer: its own input's fault (4xx naming the
        field), no pool (503), or an internal fault (500, logged with the request id, no details)."""
        if isinstance(error, ApiError):
            return error
        if isinstance(error, PromptTooLongError):
            return ApiError(413, f"prompt of {error.prompt_tokens} tokens plus max_tokens {error.max_tokens} exceeds "
                                 f"the model's context window of {error.context_window} tokens",
                            param=param, code="context_length_exceeded")
        if isinstance(error, InvalidInputError):
            return ApiError(400, error.reason, param=param, code="invalid_input")
        if isinstance(error, UnknownTierError):
            return ApiError(400, str(error), param="routing.tier")
        if isinstance(error, TierNotAllowedError):
            return ApiError(403, f"this plan stops at the {error.cap} tier", param="routing.tier",
                            kind="permission_error")
        if isinstance(error, AllTiersFailedError):
            return ApiError(503, f"no model pool could answer: {error}", kind="service_unavailable",
                            code="all_tiers_failed", headers={"Retry-After": "5"})
        log.error("requests %s failed", request_ids, exc_info=error)
        return ApiError(500, f"internal error while routing request {request_ids[0] if request_ids else ''}; "
                             "it is logged under that id", kind="server_error", code="internal_error")

    def _batches(self) -> BatchApi:
        """The Batch API and jobs of this server; 503 when the task queue is off."""
        if self.batches is None:
            raise ApiError(503, "the task queue is off on this server (needs server.use_redis and queue.enabled)",
                           kind="service_unavailable")
        return self.batches

    async def _start_job(self, provisional: RoutedAnswer, rest: TrailCheckpoint, shape: Shape,
                         param: str) -> tuple[str | None, RoutedAnswer]:
        """Queue the rest of an escalated query's route (resumed by the consumer) and return the job
        id with the provisional answer; without a queue, finish the route here and return no job."""
        job_id = new_id("job")
        routing = {**routing_object(provisional), "provisional": True, "job_id": job_id}
        try:
            await self._batches().start_job({
                "id": job_id, "object": "cascade.job", "tenant": provisional.tenant, "status": "running",
                "created_at": int(time.time()), "shape": shape, "trail": rest.model_dump(mode="json"),
                "provisional": response_of(shape, provisional, routing)})
        except (redis.RedisError, OSError, ApiError) as error:
            log.warning("progressive job not queued, finishing in the request: %s", error)
            [outcome] = await self.router.answer([rest], record=self._record_later)
            if outcome.answer is None:
                raise self._client_error(outcome.error or RuntimeError("no answer"), param,
                                         [rest.query.id]) from None
            return None, outcome.answer
        return job_id, provisional

    def _caller(self, authorization: str | None) -> Caller:
        return self.tenants.caller(authorization)

    def _params(self, request: ChatCompletionRequest | CompletionRequest) -> Any:
        return request.params(self.settings.generation, self.settings.server.max_tokens_limit)

    @api.post("/v1/chat/completions", responses={
        200: {"content": {"text/event-stream": {}}, "description": "the answer, or its events when stream is true"},
        **COMPLETION_ERRORS})
    async def chat_completions(self, request: ChatCompletionRequest, raw: Request,
                               authorization: Annotated[str | None, Header()] = None) -> Response:
        caller = self._caller(authorization)
        await self._admit(caller.tenant)
        controls = self.tenants.controls(caller, request.model, request.routing)
        queries = chat_queries(request, caller.tenant, self._params(request), controls)
        [answer], [job] = await self.route(queries, raw.headers, request.progressive)
        routing = {**routing_object(answer), "provisional": job is not None, "job_id": job}
        if request.stream:
            stream = chat_stream(answer, routing) if job is None else self._progressive_stream(answer, routing, job)
            return StreamingResponse(stream, media_type="text/event-stream")
        return _json(chat_response(answer, routing))

    async def _progressive_stream(self, answer: RoutedAnswer, routing: dict[str, Any],
                                  job_id: str) -> AsyncIterator[bytes]:
        """The provisional answer's events, then the job's event: its final answer once done, or (after
        ``queue.stream_wait_s``) the job still ``running``, to be fetched from ``GET /v1/jobs/{id}``. A
        Redis fault while it waits ends nothing: it polls on."""
        for event in chat_stream(answer, routing, done=False):
            yield event
        deadline = time.monotonic() + self.settings.queue.stream_wait_s
        job: dict[str, Any] | None = None
        while job is None and time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError, ApiError):  # Redis down or the store busy: poll on
                job = await self._batches().completed_job(job_id)
            if job is None:
                await asyncio.sleep(0.25)
        yield job_event(job if job is not None else {"id": job_id, "status": "running", "response": None})
        yield DONE

    @api.post("/v1/completions", responses={
        200: {"content": {"text/event-stream": {}}, "description": "the answers, or their events when stream is true"},
        **COMPLETION_ERRORS})
    async def completions(self, request: CompletionRequest, raw: Request,
                          authorization: Annotated[str | None, Header()] = None) -> Response:
        caller = self._caller(authorization)
        await self._admit(caller.tenant)
        controls = self.tenants.controls(caller, request.model, request.routing)
        queries = completion_queries(request, caller.tenant, self._params(request), controls)
        answers, jobs = await self.route(queries, raw.headers, request.progressive and not request.stream,
                                         shape="completion")
        if any(jobs):
            body = completion_response(answers)
            body["routings"] = [{**r, "provisional": j is not None, "job_id": j}
                                for r, j in zip(body["routings"], jobs, strict=True)]
            body["routing"] = body["routings"][0]
            return _json(body)
        if request.stream:
            return StreamingResponse(completion_stream(answers), media_type="text/event-stream")
        return _json(completion_response(answers))

    @api.get("/v1/jobs/{job_id}", responses=error_responses(401, 404, 503))
    async def job(self, job_id: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        """A progressive request's job: ``running`` with the provisional response, or ``completed``
        with the final one."""
        caller = self._caller(authorization)
        return _json(await self._batches().job(job_id, caller.tenant))

    @api.post("/v1/files", responses=error_responses(400, 401, 413, 422, 429, 503))
    async def create_file(self, file: Annotated[UploadFile, File()],
                          purpose: Annotated[str, Form(json_schema_extra={"enum": ["batch"]})],
                          authorization: Annotated[str | None, Header()] = None) -> Response:
        caller = self._caller(authorization)
        batches = self._batches()
        await self._admit(caller.tenant)
        content = await file.read()
        return _json(await batches.create_file(caller.tenant, file.filename or "input.jsonl", purpose, content))

    @api.get("/v1/files/{file_id}", responses=STORE_ERRORS)
    async def file_meta(self, file_id: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        caller = self._caller(authorization)
        return _json(public(await self._batches().file(file_id, caller.tenant)))

    @api.get("/v1/files/{file_id}/content", responses=STORE_ERRORS)
    async def file_content(self, file_id: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        caller = self._caller(authorization)
        content = await self._batches().file_content(file_id, caller.tenant)
        return Response(content, media_type="application/octet-stream")

    @api.post("/v1/batches", responses=error_responses(400, 401, 404, 413, 422, 429, 503))
    async def create_batch(self, request: BatchCreate,
                           authorization: Annotated[str | None, Header()] = None) -> Response:
        """Split the input file into chunks and queue them; the consumer routes each chunk as a batch."""
        caller = self._caller(authorization)
        batches = self._batches()
        await self._admit(caller.tenant)
        return _json(await batches.create_batch(caller.tenant, request))

    @api.get("/v1/batches/{batch_id}", responses=STORE_ERRORS)
    async def get_batch(self, batch_id: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        caller = self._caller(authorization)
        return _json(await self._batches().batch(batch_id, caller.tenant))

    @api.post("/v1/batches/{batch_id}/cancel", responses=error_responses(400, 401, 404, 409, 413, 422, 503))
    async def cancel_batch(self, batch_id: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        """Stop the lines not yet routed; the batch becomes ``cancelled`` once its queued chunks drain.
        Not rate-limited: a tenant over its rate can still stop what it spends."""
        caller = self._caller(authorization)
        return _json(await self._batches().cancel_batch(batch_id, caller.tenant))

    @api.get("/v1/models", responses=error_responses(401))
    async def models(self, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        self._caller(authorization)
        entries = [{"id": ROUTER_MODEL, "object": "model", "created": 0, "owned_by": "cascade"}]
        entries += [{"id": t.name, "object": "model", "created": 0, "owned_by": "cascade", "root": t.engine.model}
                    for t in self.settings.tiers]
        return {"object": "list", "data": entries}

    @api.post("/v1/feedback", status_code=202, responses=error_responses(400, 401, 404, 413, 422, 503))
    async def feedback(self, request: FeedbackRequest,
                       authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Label an answered request; only the tenant that made the request may label it."""
        caller = self._caller(authorization)
        log_ = self.router.feedback
        if log_ is None:
            raise ApiError(503, "the feedback log is off on this server (server.use_redis is false)",
                           kind="service_unavailable")
        if await self._owner(request.request_id, caller.tenant, log_) != caller.tenant:
            count_refused_feedback(caller.tenant)
            log.warning("tenant %s: feedback on request %s refused (not its request)", caller.tenant,
                        request.request_id)
            raise ApiError(404, f"no request {request.request_id} of this tenant", param="request_id",
                           code="not_found")
        if log_.full_of_labels:  # Redis down long enough: refuse it, rather than drop a label accepted before
            raise ApiError(503, "the feedback store is unreachable and this server holds as many labels as it can",
                           kind="service_unavailable", headers={"Retry-After": "30"})
        record = outcome_record(request.request_id, caller.tenant, correct=request.correct, score=request.score,
                                source=request.source)
        stored = await log_.append([record])
        return {"accepted": True, "request_id": request.request_id, "buffered": not stored}

    @api.delete("/v1/cache", responses=error_responses(401, 404, 429, 503))
    async def forget_cache(self, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Forget every cached answer of the caller's tenant (``SemanticCache.purge``): its questions are
        answered by the models again. Counted against the tenant's request rate where one is set; one purge at
        a time per replica (each scans Redis's key space). 404 where this server has no cache."""
        caller = self._caller(authorization)
        cache = self.router.cache
        if cache is None:  # no cache to forget: not a fault of the service (503 is for an unreachable Redis)
            raise ApiError(404, "the semantic cache is off on this server (cache.enabled or server.use_redis is "
                                "false)", kind="not_found_error", code="cache_off")
        await self._admit(caller.tenant)
        async with self._purging:
            try:
                forgotten = await cache.purge(caller.tenant)
            except RedisFaultError as error:
                raise ApiError(503, "the cache store (Redis) is unreachable; answers forgotten before the fault stay "
                                    "forgotten: try again", kind="service_unavailable",
                               headers={"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}) from None
            except Exception:
                log.exception("tenant %s: cache purge failed", caller.tenant)
                raise ApiError(500, "internal error while forgetting the cache (logged); answers forgotten before "
                                    "it stay forgotten", kind="server_error", code="internal_error") from None
        log.info("tenant %s: %d cached answers forgotten", caller.tenant, forgotten)
        return {"object": "cache.purge", "tenant": caller.tenant, "forgotten": forgotten}

    async def _owner(self, request_id: str, caller: str, log_: FeedbackLog) -> str | None:
        """The tenant that made ``request_id``, if known: ``caller`` if the id is signed for the caller; else
        the tenant remembered here or stored in the feedback log (503 if unreachable), for an unsigned id, or
        a signed one while the log stores owners (``feedback.owner_keys: true``: rotating the secret)."""
        if self.request_ids is not None and self.request_ids.signed_shape(request_id):
            if self.request_ids.made_for(request_id, caller):
                return caller
            if not self._owner_keys:  # no owner is stored for an id of this shape: another secret's, or forged
                return None
        owner = self._owners.get(request_id)
        if owner is not None:
            return owner
        try:
            return await log_.owner(request_id)
        except (redis.RedisError, OSError):
            raise ApiError(503, "request ids cannot be checked while the feedback store is unreachable",
                           kind="service_unavailable", headers={"Retry-After": "5"}) from None

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        pools = dict(zip(self.pools, await asyncio.gather(*(p.pool_health() for p in self.pools.values())),
                         strict=True))
        ready = [bool(state.get("ready")) for state in pools.values()]
        status = "ok" if all(ready) else "degraded" if any(ready) else "down"
        body = {"status": status, "pools": pools, "cache": self.router.cache is not None,
                "redis": self.breaker.status() if self.breaker is not None else None,
                "batch_store": self.batches.calls.breaker.status() if self.batches is not None else None,
                "feedback_buffered": self._buffered(), "controller": await self._controller_status()}
        return JSONResponse(body, status_code=503 if status == "down" else 200)

    async def _controller_status(self) -> dict[str, object] | None:
        if self.controller is None:
            return None
        try:
            return dict(await self.controller.status.remote())
        except Exception as error:  # Ray's message carries its traceback, paths and ids: logged, not shown
            log.warning("controller status unavailable: %s", error)
            return {"running": False, "error": public_message(unwrap(error))}

    def _buffered(self) -> int:
        return self.router.feedback.buffered if self.router.feedback is not None else 0

    async def __del__(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._recorder.close()
        if self.rate is not None:
            await self.rate.close()
        await self.router.close()


RequestModel = TypeVar("RequestModel", bound=BaseModel)


def json_content(content_type: str | None) -> bool:
    """Whether a request's Content-Type is JSON as FastAPI's routes read it: ``application/json`` or
    ``application/*+json``, parameters allowed; no Content-Type at all is not (FastAPI's strict default,
    which keeps a cross-site form or ``text/plain`` POST, sent by a browser without a preflight, out)."""
    if content_type == "application/json":
        return True
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _parsed(model: type[RequestModel], body: bytes, content_type: str | None) -> RequestModel:
    """The request body parsed and validated in one pass, its errors raised as FastAPI's (for the same
    422 handler). JSON that pydantic's parser refuses but Python's reads (a lone surrogate in a string)
    is read by Python's, as FastAPI does, so that the field validators name the field it is in. A body
    sent as anything but JSON (``json_content``) is refused as FastAPI refuses it, unread."""
    if body and not json_content(content_type):
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "input": None,
                                       "msg": "Input should be a valid dictionary or object to extract fields from"
                                              " (send it as Content-Type: application/json)"}])
    try:
        return model.model_validate_json(body)
    except ValidationError as invalid:
        problems = invalid.errors()
    if any(p["type"] == "json_invalid" for p in problems):
        try:
            return model.model_validate(json.loads(body))
        except ValidationError as error:
            problems = error.errors()
        except (ValueError, RecursionError):  # not JSON to Python either (or nested past its limit)
            pass
    raise RequestValidationError([{**p, "loc": ("body", *p["loc"])} for p in problems])


def _ingress() -> RouterIngress:
    """This replica's ingress object, as Serve's own class routes get theirs."""
    return cast(RouterIngress, serve.get_replica_context().servable_object)


async def _chat_completions(request: Request) -> Response:
    body = _parsed(ChatCompletionRequest, await request.body(), request.headers.get("content-type"))
    return await _ingress().chat_completions(body, request, request.headers.get("authorization"))


async def _completions(request: Request) -> Response:
    body = _parsed(CompletionRequest, await request.body(), request.headers.get("content-type"))
    return await _ingress().completions(body, request, request.headers.get("authorization"))


# The two completion endpoints as plain Starlette routes, matched before the documented ones (which
# OpenAPI still shows): the same handlers, the same middleware and error handlers, without FastAPI's
# per-request dependency solving and its parse of the body into a dict that is then validated.
# On Serve this took 0.17–0.53 ms of the ingress replica's CPU per request off cascade, in paired trials.
api.router.routes[:0] = [Route("/v1/chat/completions", _chat_completions, methods=["POST"], include_in_schema=False),
                         Route("/v1/completions", _completions, methods=["POST"], include_in_schema=False)]
