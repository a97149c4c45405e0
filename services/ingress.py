"""The router ingress: a FastAPI app on Ray Serve that batches concurrent requests into the core router.

Concurrent requests are grouped by ``@serve.batch``; ``Router.begin`` looks the group up in the cache
and sends the misses to the small-model pool in one call, deciding for the whole group with arrays.
Accepted answers return at once; each escalated request then awaits its own ``Router.finish``, so
no request waits for another's escalation. Cache stores and feedback appends are batched the same
way, off the request path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry.propagate import extract
from ray import serve

from cascade.config import CascadeSettings
from cascade.engines.base import PromptTooLongError
from cascade.factory import build_router
from cascade.feedback import outcome_record
from cascade.router import AllTiersFailedError, Trail
from cascade.schemas import Query, RoutedAnswer
from cascade.telemetry import configure_from_env
from services.openai_api import (
    ROUTER_MODEL,
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    chat_queries,
    chat_response,
    chat_stream,
    completion_queries,
    completion_response,
    completion_stream,
)
from services.pool import limit_threads
from services.pool_engine import PoolEngine, unwrap
from services.tenants import Caller, TenantDirectory

log = logging.getLogger(__name__)

api = FastAPI(title="cascade router", description="OpenAI-compatible LLM router: small model first, escalate on doubt")


def _json(body: dict[str, Any]) -> Response:
    """A JSON response serialized with orjson."""
    return Response(orjson.dumps(body), media_type="application/json")


def _field(location: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in location if part != "body") or "body"


@api.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = error.errors()
    message = "; ".join(f"{_field(p.get('loc', ()))}: {p.get('msg', 'invalid')}" for p in problems[:5])
    param = _field(problems[0].get("loc", ())) if problems else None
    return JSONResponse(ApiError(422, message or "invalid request", param=param).body(), status_code=422)


class RouterIngress:
    """Serves the OpenAI API over the core router, whose tiers are the model pools' handles."""

    async def __init__(self, settings: dict[str, Any], pools: dict[str, Any],  # type: ignore[misc]
                       controller: Any = None) -> None:
        limit_threads()
        configure_from_env()
        self.settings = CascadeSettings(**settings)
        tiers = self.settings.tiers
        self.pools = {t.name: PoolEngine(pools[t.name], t.engine.model) for t in tiers}
        self.router = build_router(self.settings, with_redis=self.settings.server.use_redis, engines=self.pools)
        self.controller = controller
        self.tenants = TenantDirectory(self.settings.server, [t.name for t in tiers])
        server = self.settings.server
        self._begin: Callable[[Query], Awaitable[Trail]] = serve.batch(
            max_batch_size=server.max_batch_size, batch_wait_timeout_s=server.batch_wait_timeout_s,
            max_concurrent_batches=server.max_concurrent_batches)(self.router.begin)
        self._record: Callable[[Trail], Coroutine[Any, Any, None]] = serve.batch(
            max_batch_size=256, batch_wait_timeout_s=0.05)(self._record_batch)
        self._background: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._records = self.router.cache is not None or self.router.feedback is not None

    async def _record_batch(self, trails: list[Trail]) -> list[None]:
        await self.router.record(trails)
        return [None] * len(trails)

    async def route(self, queries: list[Query], headers: Mapping[str, str]) -> list[RoutedAnswer]:
        """Route a request's queries: batched first pass, then each its own escalation; traced as a
        continuation of the caller's trace (W3C ``traceparent``), if any."""
        limit = self.settings.server.max_prompt_chars
        for query in queries:
            size = len(query.question) + sum(len(c) for c in query.context) + sum(
                len(m.content) for m in query.messages or [])
            if size > limit:
                raise ApiError(413, f"prompt of {size} characters exceeds this server's limit of {limit}",
                               param="messages" if query.messages else "prompt", code="prompt_too_long")
        self._in_flight += 1
        try:
            alone = self._in_flight == 1 and len(queries) == 1
            trails = await self.router.begin(queries) if alone else await asyncio.gather(*map(self._begin, queries))
        finally:
            self._in_flight -= 1
        try:
            answers = await asyncio.gather(*(self.router.finish(t) for t in trails))
        except PromptTooLongError as error:
            raise ApiError(413, str(error), param="messages", code="context_length_exceeded") from None
        except AllTiersFailedError as error:
            raise ApiError(503, f"no model pool could answer: {error}", kind="service_unavailable",
                           code="all_tiers_failed", headers={"Retry-After": "5"}) from None
        parent = extract(dict(headers))
        for trail, answer in zip(trails, answers, strict=True):
            self.router.telemetry.trace_answer(answer, trail.started_ns, trail.links, parent=parent)
        self.router.telemetry.record_answers(answers)
        for trail in trails if self._records else []:
            task = asyncio.create_task(self._record(trail))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return list(answers)

    def _caller(self, authorization: str | None) -> Caller:
        return self.tenants.caller(authorization)

    def _params(self, request: ChatCompletionRequest | CompletionRequest) -> Any:
        return request.params(self.settings.generation, self.settings.server.max_tokens_limit)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: ChatCompletionRequest, raw: Request,
                               authorization: Annotated[str | None, Header()] = None) -> Response:
        caller = self._caller(authorization)
        controls = self.tenants.controls(caller, request.model, request.routing)
        queries = self._queries(lambda: chat_queries(request, caller.tenant, self._params(request), controls))
        answer = (await self.route(queries, raw.headers))[0]
        if request.stream:
            return StreamingResponse(chat_stream(answer), media_type="text/event-stream")
        return _json(chat_response(answer))

    @api.post("/v1/completions")
    async def completions(self, request: CompletionRequest, raw: Request,
                          authorization: Annotated[str | None, Header()] = None) -> Response:
        caller = self._caller(authorization)
        controls = self.tenants.controls(caller, request.model, request.routing)
        queries = self._queries(lambda: completion_queries(request, caller.tenant, self._params(request), controls))
        answers = await self.route(queries, raw.headers)
        if request.stream:
            return StreamingResponse(completion_stream(answers), media_type="text/event-stream")
        return _json(completion_response(answers))

    @staticmethod
    def _queries(build: Callable[[], list[Query]]) -> list[Query]:
        """Core queries from a request; a question the core refuses is a 400 naming the field."""
        try:
            return build()
        except ValueError as error:
            raise ApiError(400, str(error).splitlines()[-1].strip() if str(error) else "invalid request",
                           param="messages") from None

    @api.get("/v1/models")
    async def models(self, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        self._caller(authorization)
        entries = [{"id": ROUTER_MODEL, "object": "model", "created": 0, "owned_by": "cascade"}]
        entries += [{"id": t.name, "object": "model", "created": 0, "owned_by": "cascade", "root": t.engine.model}
                    for t in self.settings.tiers]
        return {"object": "list", "data": entries}

    @api.post("/v1/feedback", status_code=202)
    async def feedback(self, request: FeedbackRequest,
                       authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        caller = self._caller(authorization)
        log_ = self.router.feedback
        if log_ is None:
            raise ApiError(503, "the feedback log is off on this server (server.use_redis is false)",
                           kind="service_unavailable")
        record = outcome_record(request.request_id, caller.tenant, correct=request.correct, score=request.score,
                                source=request.source)
        stored = await log_.append([record])
        return {"accepted": True, "request_id": request.request_id, "buffered": not stored}

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        pools = dict(zip(self.pools, await asyncio.gather(*(p.pool_health() for p in self.pools.values())),
                         strict=True))
        ready = [bool(state.get("ready")) for state in pools.values()]
        status = "ok" if all(ready) else "degraded" if any(ready) else "down"
        body = {"status": status, "pools": pools, "cache": self.router.cache is not None,
                "feedback_buffered": self._buffered(), "controller": await self._controller_status()}
        return JSONResponse(body, status_code=503 if status == "down" else 200)

    async def _controller_status(self) -> dict[str, object] | None:
        if self.controller is None:
            return None
        try:
            return dict(await self.controller.status.remote())
        except Exception as error:
            return {"running": False, "error": str(unwrap(error))}

    def _buffered(self) -> int:
        return self.router.feedback.buffered if self.router.feedback is not None else 0

    async def __del__(self) -> None:
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.router.close()
