"""Bare Ray Serve deployments the router's overhead is measured against: one that echoes the
request body (``tests/benchmarks/bench_serve.py``) and one that calls a backend for every request."""

from __future__ import annotations

from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class Echo:
    """Answers every POST with its own JSON body."""

    async def __call__(self, request: Request) -> JSONResponse:
        body: Any = await request.json()
        return JSONResponse({"echo": body})


class Forwarder:
    """Answers every POST by posting one fixed chat request (``body``) to an OpenAI-compatible backend
    over one pooled aiohttp session and returning the backend's reply as it came: the least any Serve
    router in front of a remote model does per request (``tests/benchmarks/bench_openai_tiers.py``)."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self._url = url
        self._body = body
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, request: Request) -> Response:
        await request.body()
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        async with self._session.post(self._url, json=self._body) as reply:
            return Response(await reply.read(), status_code=reply.status, media_type="application/json")
