"""Limits on what a client may send: request body size (checked before anything is parsed) and a
per-tenant request rate kept in Redis, so that every ingress replica counts against the same limit."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from cascade.breaker import RedisBreaker
from cascade.coalesce import Coalescer
from cascade.redis_clients import connect

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class BodyLimits:
    """Largest request body in bytes: ``uploads`` for ``POST /v1/files``, ``default`` elsewhere."""

    default: int = 8 << 20
    uploads: int = 64 << 20

    def of(self, path: str) -> int:
        return self.uploads if path.rstrip("/").endswith("/v1/files") else self.default


BODY_LIMITS = BodyLimits()  # this process's limits: the ingress sets them from its settings when it starts


def too_large_message(limit: int, what: str = "request body") -> str:
    return f"{what} exceeds this server's limit of {limit} bytes"


def too_large_body(limit: int, what: str = "request body") -> bytes:
    return orjson.dumps({"error": {"message": too_large_message(limit, what), "type": "invalid_request_error",
                                   "param": None, "code": "request_too_large"}})


class BodyTooLargeError(HTTPException):
    """A body that grew past the limit while it was received. An ``HTTPException``, because FastAPI's
    parsing of a route's body turns any other exception into a 400: this one it raises again, to the
    app's HTTP error handler (a 413 naming the limit), or else to ``BodyLimitMiddleware``."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit), headers={"connection": "close"})
        self.limit = limit


class BodyLimitMiddleware:
    """ASGI middleware: 413 when Content-Length is over the limit, before the body is read, and when a
    body sent without it (chunked) grows past the limit while it is received."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limits: BodyLimits | None = None,
                 ) -> None:
        self.app = app
        self.limits = limits  # None: this module's BODY_LIMITS, read at each request (Serve copies the app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        limit = (self.limits or BODY_LIMITS).of(str(scope.get("path", "")))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = too_large_body(limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """Requests per tenant per minute, counted in Redis (a fixed one-minute window per tenant).
    While Redis is unreachable (or skipped by the breaker) requests are let through, not refused.

    Checks that come while another is under way are counted together (``cascade/coalesce.py``): one
    pipeline of one ``INCRBY`` per tenant window for all of them, each request taking its own place in
    that window's count, so a request costs a share of a round trip rather than one of its own. The
    breaker times each call out, so the client sets no socket timeout (one per reply costs a timer per
    read)."""

    def __init__(self, redis_url: str, breaker: RedisBreaker, prefix: str = "cascade:rate") -> None:
        self._client = connect(redis_url, socket_connect_timeout=1)
        self.breaker = breaker
        self.prefix = prefix
        self._counts = Coalescer(self._count_together)

    @property
    def round_trips(self) -> int:
        """Pipelines sent to Redis so far (each counts every check that came while the last was under way)."""
        return self._counts.runs

    async def _count_together(self, keys: list[str]) -> list[int]:
        """Each request's place in its window's count (1 for the window's first request), for the
        window keys of requests made together: one ``INCRBY`` and ``EXPIRE`` per distinct key."""
        asked = Counter(keys)

        async def count() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, requests in asked.items():
                    pipe.incrby(key, requests)
                    pipe.expire(key, 120)
                return list(await pipe.execute())

        totals = await self.breaker.call(count)
        before = {key: int(total) - asked[key] for key, total in zip(asked, totals[::2], strict=True)}
        places = []
        for key in keys:
            before[key] += 1
            places.append(before[key])
        return places

    async def retry_after(self, tenant: str, per_minute: int) -> int | None:
        """Seconds until the tenant may ask again if this request is over its limit, else None."""
        now = time.time()
        try:
            used = await self._counts(f"{self.prefix}:{tenant}:{int(now // 60)}")
        except (RedisError, OSError) as error:
            log.debug("rate limit not checked for tenant %s: %s", tenant, error)
            return None
        return max(1, int(60 - now % 60) + 1) if used > per_minute else None

    async def close(self) -> None:
        await self._client.aclose()
