"""The engine protocol every tier's model implements, and the errors engines raise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cascade.errors import public_message
from cascade.schemas import Generation, Query


class EngineError(RuntimeError):
    """An engine could not produce a generation."""


class ModelNotFoundError(EngineError):
    """The configured model file or directory does not exist."""


class PromptTooLongError(EngineError, ValueError):
    """A prompt plus its requested completion does not fit the model's context window.

    Picklable with its fields, so it keeps its type across Ray (a pool replica raises it, the
    router answers 413)."""

    def __init__(self, query_id: str, prompt_tokens: int, max_tokens: int, context_window: int) -> None:
        super().__init__(
            f"query {query_id}: prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds "
            f"the model's context window of {context_window} tokens"
        )
        self.query_id = query_id
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_window = context_window

    def __reduce__(self) -> tuple[type[PromptTooLongError], tuple[str, int, int, int]]:
        return type(self), (self.query_id, self.prompt_tokens, self.max_tokens, self.context_window)


class InvalidInputError(EngineError, ValueError):
    """An engine cannot read one query's input (e.g. text its tokenizer refuses): that query alone fails."""

    def __init__(self, query_id: str, reason: str) -> None:
        super().__init__(f"query {query_id}: {reason}")
        self.query_id = query_id
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidInputError], tuple[str, str]]:
        return type(self), (self.query_id, self.reason)


class PartialGenerationError(EngineError):
    """Some queries of a batch failed on their own (an engine that calls its model once per query):
    ``results`` holds each query's generation or the error that stopped it, in order, so that the
    others keep their answers and are not generated again."""

    def __init__(self, results: Sequence[Generation | Exception]) -> None:
        errors = [r for r in results if isinstance(r, Exception)]
        first = f": {public_message(errors[0])}" if errors else ""
        super().__init__(f"{len(errors)} of {len(results)} queries failed{first}")
        self.results = list(results)

    def __reduce__(self) -> tuple[type[PartialGenerationError], tuple[list[Generation | Exception]]]:
        return type(self), (self.results,)


def input_error(error: BaseException) -> bool:
    """Whether an engine error is caused by a query's content (not by the engine being down)."""
    return isinstance(error, (PromptTooLongError, InvalidInputError, UnicodeError))


def gathered(results: Sequence[Generation | BaseException]) -> list[Generation]:
    """The generations of a batch whose queries ran each on its own (``asyncio.gather`` with
    ``return_exceptions``): cancellation and exit go on up; where any query failed (all of them, too:
    each error names its own query, which its batch-mates' answers must not show),
    ``PartialGenerationError``."""
    outcomes: list[Generation | Exception] = []
    for result in results:
        if not isinstance(result, (Generation, Exception)):
            raise result
        outcomes.append(result)
    generations = [r for r in outcomes if isinstance(r, Generation)]
    if len(generations) == len(outcomes):
        return generations
    raise PartialGenerationError(outcomes)


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
