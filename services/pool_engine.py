"""The core ``Engine`` protocol over a model pool's deployment handle, so the core router drives
Ray Serve pools exactly as it drives in-process engines; and the engines of tiers that run inside
the ingress (remote engines, whose HTTP call is then the only hop)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cascade.engines.base import Deadline, Engine, EngineError
from cascade.factory import build_engine
from cascade.schemas import Generation, Query
from cascade.telemetry import carrier
from services.settings import PoolTierConfig

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

    async def generate(self, queries: Sequence[Query], deadline: Deadline | None = None) -> list[Generation]:
        try:
            return list(await self.handle.generate.remote(list(queries), carrier(), deadline))
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


class IngressEngine:
    """A tier's engine run by the ingress itself; reports its health the way a pool replica does."""

    def __init__(self, engine: Engine, tier: str) -> None:
        self.engine = engine
        self.tier = tier
        self.model = engine.model

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    async def generate(self, queries: Sequence[Query], deadline: Deadline | None = None) -> list[Generation]:
        return await self.engine.generate(queries, deadline)

    def health(self) -> dict[str, object]:
        return self.engine.health()

    async def pool_health(self) -> dict[str, object]:
        return {"tier": self.tier, "placement": "ingress", **self.engine.health()}


def tier_engines(tiers: Sequence[PoolTierConfig], pools: Mapping[str, Any]) -> dict[str, PoolEngine | IngressEngine]:
    """Each tier's engine as the ingress (or the task consumer) calls it: its pool's handle, or the
    engine itself for a tier placed in the ingress."""
    return {t.name: IngressEngine(build_engine(t.engine), t.name) if t.in_ingress
            else PoolEngine(pools[t.name], t.engine.model) for t in tiers}
