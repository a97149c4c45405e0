"""A model pool: one Ray Serve deployment class, deployed once per tier, wrapping a core engine.

The engine starts once per replica. The ingress calls ``generate`` with a whole batch of queries
and gets back ``Generation`` objects with their log-probability arrays, so signals never travel as
JSON. ``check_health`` fails the replica (and Serve restarts it) when the engine reports it is not
alive; a pool whose calls fail but whose process is up stays, and the router escalates past it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from cascade.engines.base import Deadline
from cascade.factory import build_engine
from cascade.schemas import Generation, Query
from cascade.telemetry import SCOPE, configure_from_env, continued
from services.replica import freeze_start_up_heap, limit_threads
from services.settings import PoolTierConfig

log = logging.getLogger(__name__)


class ModelPool:
    """Serves one tier's engine to the router ingress."""

    async def __init__(self, tier: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        limit_threads()
        configure_from_env()
        self.tracer = trace.get_tracer(SCOPE)
        self.tier = PoolTierConfig.model_validate(tier)
        self.engine = build_engine(self.tier.engine)
        await self.engine.start()
        freeze_start_up_heap()
        log.info("pool %s ready with %s", self.tier.name, self.engine.model)

    async def generate(self, queries: Sequence[Query], trace_headers: Mapping[str, str] | None = None,
                       deadline: Deadline | None = None) -> list[Generation]:
        """One generation per query, in order, from one batched engine call due by the tier's
        deadline, traced as a child of the caller's tier span."""
        with continued(trace_headers), self.tracer.start_as_current_span(
                "pool.generate", kind=SpanKind.SERVER,
                attributes={"cascade.tier": self.tier.name, "cascade.batch_size": len(queries)}):
            return await self.engine.generate(queries, deadline)

    def health(self) -> dict[str, object]:
        """Engine state, as the ingress's /healthz reports it."""
        return {"tier": self.tier.name, **self.engine.health()}

    def check_health(self) -> None:
        """Serve's replica health check."""
        state = self.engine.health()
        if state.get("alive", True) is False:
            raise RuntimeError(f"engine of tier {self.tier.name} is not alive: {state}")

    async def __del__(self) -> None:
        await self.engine.close()
