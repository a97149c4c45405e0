"""The core ``Engine`` protocol over a model pool's deployment handle, so the core router drives
Ray Serve pools exactly as it drives in-process engines."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cascade.engines.base import EngineError
from cascade.schemas import Generation, Query
from cascade.telemetry import carrier

log = logging.getLogger(__name__)


def unwrap(error: BaseException) -> BaseException:
    """The exception the replica raised, not Ray's wrapper around it."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def _from_ray(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] == "ray"


def plain_error(error: BaseException, model: str) -> BaseException:
    """The replica's own exception where it survived Ray (its type kept), else an ``EngineError`` that
    names the pool and Ray's error type only: Ray's messages carry tracebacks, paths and actor ids,
    which are logged here and never reach a client."""
    cause = unwrap(error)
    if not _from_ray(cause):
        return cause
    log.warning("pool %s call failed: %s", model, error)
    return EngineError(f"the {model} pool could not answer ({type(cause).__name__})")


class PoolEngine:
    """Calls ``ModelPool.generate`` on one of the pool's replicas."""

    def __init__(self, handle: Any, model: str) -> None:
        self.handle = handle
        self.model = model

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generate(self, queries: Sequence[Query]) -> list[Generation]:
        try:
            return list(await self.handle.generate.remote(list(queries), carrier()))
        except Exception as error:
            raise plain_error(error, self.model) from None

    def health(self) -> dict[str, object]:
        return {"engine": "pool", "model": self.model}

    async def pool_health(self) -> dict[str, object]:
        """The health a pool replica reports."""
        try:
            return dict(await self.handle.health.remote())
        except Exception as error:
            return {"model": self.model, "ready": False, "error": str(plain_error(error, self.model))}
