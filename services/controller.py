"""The online threshold controller as an optional Serve deployment (``controller:`` in config),
the same loop ``cascade thresholds run`` runs: one replica consuming the feedback stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from cascade.thresholds import ControllerConfig, ThresholdController

log = logging.getLogger(__name__)


class ThresholdControllerDeployment:
    """Runs ``ThresholdController.run`` in the replica's event loop for as long as the replica lives."""

    async def __init__(self, redis_url: str, config: dict[str, Any]) -> None:  # type: ignore[misc]
        self.config = ControllerConfig.model_validate(config)
        self.controller = ThresholdController(redis_url, self.config)
        self._task = asyncio.create_task(self.controller.run())

    def status(self) -> dict[str, object]:
        """Whether the loop runs, what it controls, and how many tenants it has seen."""
        return {"running": not self._task.done(), "target": self.config.target.model_dump(),
                "tenants": len(self.controller.windows)}

    def check_health(self) -> None:
        if self._task.done():
            error = self._task.exception()
            raise RuntimeError(f"threshold controller stopped: {error}")

    async def __del__(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.controller.close()
