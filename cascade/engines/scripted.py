"""A scripted engine: answers decided by a function, for unit tests of routing logic and for
overhead benchmarks only. Never evidence of quality, never the demo."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cascade.engines.base import Deadline, EngineError, PromptTooLongError, bounded, gathered
from cascade.schemas import Generation, Query


@dataclass(frozen=True)
class ScriptedReply:
    """What the scripted model says: text and one logprob per token (top-k derived if absent)."""

    text: str
    logprobs: Sequence[float]
    top_logprobs: np.ndarray | None = None


def echo_reply(query: Query) -> ScriptedReply:
    """Repeat the question's first word with probability 0.9 per token."""
    return ScriptedReply(text=query.question.split()[0], logprobs=[float(np.log(0.9))])


class ScriptedArgs(BaseModel):
    """``engine_args`` of a scripted tier in configuration: how the stand-in pool behaves."""

    model_config = ConfigDict(extra="forbid")

    delay_s: float = Field(default=0.0, ge=0.0, description="seconds each call takes")
    fail: str | None = Field(default=None, description="every call fails with this message")
    uncertain_marker: str | None = Field(default=None,
                                         description="questions containing it are answered with probability 0.05")
    context_window: int | None = Field(default=None, ge=1,
                                       description="a prompt of more words than this raises PromptTooLongError")
    unreadable_marker: str | None = Field(
        default=None, description="a batch holding a question with it fails as a tokenizer would (UnicodeEncodeError)")


def marked_reply(marker: str) -> Callable[[Query], ScriptedReply]:
    """The echo reply, but unsure (probability 0.05 per token) of questions containing ``marker``."""
    def reply(query: Query) -> ScriptedReply:
        confident = echo_reply(query)
        if marker in query.question:
            return ScriptedReply(text=confident.text, logprobs=[float(np.log(0.05))])
        return confident
    return reply


@dataclass
class ScriptedEngine:
    """Replies from ``script``; ``delay_s`` and ``failure`` simulate slow and failing pools."""

    model: str
    script: Callable[[Query], ScriptedReply] = echo_reply
    delay_s: float = 0.0
    failure: Exception | None = None
    context_window: int | None = None
    unreadable_marker: str | None = None
    failing_marker: str | None = None  # a question holding it fails alone, as its own call to a remote model would
    calls: list[list[str]] = field(default_factory=list)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @classmethod
    def from_args(cls, model: str, engine_args: dict[str, object]) -> ScriptedEngine:
        """A scripted engine as configuration describes it (see ``ScriptedArgs``)."""
        args = ScriptedArgs.model_validate(engine_args)
        script = echo_reply if args.uncertain_marker is None else marked_reply(args.uncertain_marker)
        return cls(model, script=script, delay_s=args.delay_s,
                   failure=None if args.fail is None else RuntimeError(args.fail),
                   context_window=args.context_window, unreadable_marker=args.unreadable_marker)

    def health(self) -> dict[str, object]:
        return {"engine": "scripted", "model": self.model, "ready": True, "failing": self.failure is not None}

    async def generate(self, queries: Sequence[Query], deadline: Deadline | None = None) -> list[Generation]:
        """The script's answers after ``delay_s``, which the whole batch waits (by the deadline)."""
        self.calls.append([q.id for q in queries])
        if self.delay_s:
            await bounded(asyncio.sleep(self.delay_s), deadline, self.model)
        if self.failure is not None:
            raise EngineError(f"{self.model}: {self.failure}") from self.failure
        for query in queries:
            words = len(query.question.split()) + sum(len(c.split()) for c in query.context)
            if self.context_window is not None and words + query.params.max_tokens > self.context_window:
                raise PromptTooLongError(query.id, words, query.params.max_tokens, self.context_window)
            if self.unreadable_marker is not None and self.unreadable_marker in query.question:
                raise UnicodeEncodeError("utf-8", query.question, 0, 1, "the scripted tokenizer cannot read it")
        marker = self.failing_marker
        return gathered([EngineError(f"{self.model} failed query {q.id}") if marker is not None and marker in q.question
                         else self._generation(q, self.script(q)) for q in queries])

    def _generation(self, query: Query, reply: ScriptedReply) -> Generation:
        logprobs = np.asarray(reply.logprobs, np.float32)
        top = reply.top_logprobs
        if top is None:
            runner_up = np.log1p(-np.exp(logprobs) + 1e-9)[:, None]
            top = np.concatenate([logprobs[:, None], runner_up], axis=1)
        return Generation(
            model=self.model,
            text=reply.text,
            token_ids=np.arange(len(logprobs)),
            token_logprobs=logprobs,
            top_logprobs=top,
            finish_reason="stop",
            prompt_tokens=len(query.question.split()) + sum(len(c.split()) for c in query.context),
            completion_tokens=len(logprobs),
        )


class ScriptedConfig(BaseModel):
    """``engine: {kind: scripted, ...}``: a stand-in for unit tests of routing logic and benchmarks."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["scripted"] = "scripted"
    remote: ClassVar[bool] = False  # stands in for an in-process engine: runs in a pool
    model: str
    engine_args: dict[str, Any] = Field(default_factory=dict, description="see ScriptedArgs")

    def build(self) -> ScriptedEngine:
        return ScriptedEngine.from_args(self.model, self.engine_args)
