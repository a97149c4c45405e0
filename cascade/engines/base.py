"""The engine protocol every tier's model implements, and the errors engines raise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cascade.schemas import Generation, Query


class EngineError(RuntimeError):
    """An engine could not produce a generation."""


class ModelNotFoundError(EngineError):
    """The configured model file or directory does not exist."""


class PromptTooLongError(EngineError, ValueError):
    """A prompt plus its requested completion does not fit the model's context window."""

    def __init__(self, query_id: str, prompt_tokens: int, max_tokens: int, context_window: int) -> None:
        super().__init__(
            f"query {query_id}: prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds "
            f"the model's context window of {context_window} tokens"
        )
        self.query_id = query_id
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window


@runtime_checkable
class Engine(Protocol):
    """Generates answers with per-token log-probabilities for a batch of queries."""

    model: str

    async def start(self) -> None:
        """Load the model; idempotent."""
        ...

    async def generate(self, queries: Sequence[Query]) -> list[Generation]:
        """One generation per query, in order."""
        ...

    async def close(self) -> None:
        """Release the model."""
        ...

    def health(self) -> dict[str, object]:
        """Engine state for health checks."""
        ...
