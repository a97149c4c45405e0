"""A bare Ray Serve deployment that echoes the request body: the baseline the router's overhead
is measured against (``tests/benchmarks/bench_serve.py``)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


class Echo:
    """Answers every POST with its own JSON body."""

    async def __call__(self, request: Request) -> JSONResponse:
        body: Any = await request.json()
        return JSONResponse({"echo": body})
