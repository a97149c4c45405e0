"""The engine protocol every tier's model implements, and the errors engines raise."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

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


class DeadlineExceededError(EngineError, TimeoutError):
    """A tier's model did not answer within the tier's ``timeout_s``: a query generated on its own (or
    the batch, where ``query_id`` is None) goes on to the next tier."""

    def __init__(self, model: str, timeout_s: float, query_id: str | None = None) -> None:
        what = "the batch" if query_id is None else f"query {query_id}"
        super().__init__(f"{model} did not answer {what} within {timeout_s:g} s")
        self.model, self.timeout_s, self.query_id = model, timeout_s, query_id

    def __reduce__(self) -> tuple[type[DeadlineExceededError], tuple[str, float, str | None]]:
        return type(self), (self.model, self.timeout_s, self.query_id)


def template_refusal(query_id: str, error: Exception) -> InvalidInputError:
    """A chat template's refusal of one query's messages (its ``raise_exception``, e.g. roles that do not
    alternate: llama-cpp-python raises a plain ValueError, transformers a plain TemplateError): that
    query's input error, never its batch's failure. A template that is itself broken (a syntax error,
    an undefined name: subclasses of those) stays an engine fault."""
    return InvalidInputError(query_id, f"the model's chat template refuses these messages: {public_message(error)}")


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


AwaitedT = TypeVar("AwaitedT")


@dataclass(frozen=True)
class Deadline:
    """When a tier's answers are due, on the wall clock: it holds across the hop to a pool replica, and
    a call's wait in Serve's queue counts against it (nodes' clocks must agree, as NTP keeps them)."""

    due: float  # time.time() when due
    timeout_s: float  # the time allowed from the call: messages name it, and no clock gets longer

    @classmethod
    def after(cls, timeout_s: float | None) -> Deadline | None:
        return None if timeout_s is None else cls(time.time() + timeout_s, timeout_s)

    def later(self, grace_s: float) -> Deadline:
        return Deadline(self.due + grace_s, self.timeout_s + grace_s)

    def loop_time(self) -> float:
        """The running event loop's time at which it is due; never more than ``timeout_s`` from now (a
        clock behind the caller's must not let a call outlive the caller's wait)."""
        return asyncio.get_running_loop().time() + min(self.due - time.time(), self.timeout_s)


async def bounded(call: Awaitable[AwaitedT], deadline: Deadline | None, model: str,
                  query_id: str | None = None) -> AwaitedT:
    """``call``'s result, or ``DeadlineExceededError`` (naming the query, else the batch) once the
    deadline has passed; a ``TimeoutError`` of the call's own keeps its type."""
    if deadline is None:
        return await call
    due = deadline.loop_time()
    if due <= asyncio.get_running_loop().time():  # due already (a long wait in a pool's queue): never start it
        if inspect.iscoroutine(call):
            call.close()
        raise DeadlineExceededError(model, deadline.timeout_s, query_id)
    timer = asyncio.timeout_at(due)
    try:
        async with timer:
            return await call
    except TimeoutError:
        if timer.expired():
            raise DeadlineExceededError(model, deadline.timeout_s, query_id) from None
        raise


async def each_alone(calls: Sequence[tuple[str, Awaitable[Generation]]], deadline: Deadline | None,
                     model: str) -> list[Generation]:
    """The generations of a batch whose queries (``(query id, call)`` pairs) run each on its own, each
    by the deadline: one that fails or runs late fails alone (``gathered``)."""
    bounded_calls = [bounded(call, deadline, model, query_id) for query_id, call in calls]
    if len(bounded_calls) == 1:  # no task for a lone query
        return [await bounded_calls[0]]
    return gathered(await asyncio.gather(*bounded_calls, return_exceptions=True))


@runtime_checkable
class Engine(Protocol):
    """Generates answers with per-token log-probabilities for a batch of queries."""

    model: str

    async def start(self) -> None:
        """Load the model; idempotent."""
        ...

    async def generate(self, queries: Sequence[Query], deadline: Deadline | None = None) -> list[Generation]:
        """One generation per query, in order, each by the deadline (``DeadlineExceededError``): an
        engine that generates each query on its own fails a late query alone (``each_alone``)."""
        ...

    async def close(self) -> None:
        """Release the model."""
        ...

    def health(self) -> dict[str, object]:
        """Engine state for health checks."""
        ...
