"""Data contracts of the routing core: queries in, generations from engines, routed answers out."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    field_validator,
    model_validator,
)

MAX_SEED = 2**63 - 1
MAX_TOKENS_BOUND = 4096  # the most a query may ask for; a server's max_tokens_limit stays within it
TOKEN_COUNT_BOUND = 2**31 - 1  # beyond any context window: a generation's counts, priced in int64, stay exact


def valid_text(value: str) -> str:
    """``value`` if it is valid Unicode (encodable as UTF-8); a lone UTF-16 surrogate is refused."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"text is not valid Unicode: lone surrogate {value[error.start]!r} at position "
                             f"{error.start}") from None
    return value


Text = Annotated[str, AfterValidator(valid_text)]


def _float_array(value: Any) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 0:
        raise ValueError("expected a sequence of numbers, got a scalar")
    return array


def _int_array(value: Any) -> np.ndarray:
    array = np.asarray(value, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError("expected a flat sequence of token ids")
    return array


FloatArray = Annotated[
    np.ndarray, PlainValidator(_float_array), PlainSerializer(lambda a: a.tolist(), return_type=list)
]
IntArray = Annotated[
    np.ndarray, PlainValidator(_int_array), PlainSerializer(lambda a: a.tolist(), return_type=list)
]

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "error"]
Decision = Literal["accept", "escalate"]


class Message(BaseModel):
    """One chat message (OpenAI shape)."""

    role: Role
    content: Text


MIN_TEMPERATURE = 1e-2  # the lowest temperature sampled at, as vLLM clamps it (logits / 1e-40 overflow)


def sampling_temperature(temperature: float) -> float:
    """``temperature``, raised to ``MIN_TEMPERATURE`` where it is above 0 and below it (0 stays greedy)."""
    return MIN_TEMPERATURE if 0.0 < temperature < MIN_TEMPERATURE else temperature


class GenerationParams(BaseModel):
    """Sampling parameters sent to every tier; greedy by default so that signals are stable."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(default=32, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[Text] = Field(default_factory=list)
    top_logprobs: int = Field(default=20, ge=0, le=20)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    @field_validator("temperature")
    @classmethod
    def _sampling_temperature(cls, value: float) -> float:
        return sampling_temperature(value)


class RoutingControls(BaseModel):
    """Per-query limits and overrides on routing, set by a tenant's plan or a permitted debug request."""

    model_config = ConfigDict(extra="forbid")

    force_tier: str | None = Field(default=None, description="answer from this tier only, no escalation")
    max_tier: str | None = Field(default=None, description="highest tier this query may reach")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0,
                                    description="escalate when confidence is below this, instead of the policy")


class Query(BaseModel):
    """A request to answer: chat messages or a bare prompt, optional context documents."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    tenant: str = "default"
    messages: list[Message] | None = None
    prompt: Text | None = None
    context: list[Text] = Field(default_factory=list)
    params: GenerationParams = Field(default_factory=GenerationParams)
    routing: RoutingControls = Field(default_factory=RoutingControls)

    @model_validator(mode="after")
    def _has_question(self) -> Query:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a query needs exactly one of 'messages' or 'prompt'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("'prompt' is empty: there is no question to answer")
        if self.messages is not None:
            users = [m for m in self.messages if m.role == "user"]
            if not users or not users[-1].content.strip():
                raise ValueError("'messages' has no non-empty user message: there is no question")
        return self

    @property
    def question(self) -> str:
        """The user's question: the prompt, or the content of the last user message."""
        if self.prompt is not None:
            return self.prompt
        assert self.messages is not None
        return next(m.content for m in reversed(self.messages) if m.role == "user")


class Generation(BaseModel):
    """What one engine produced for one query, with per-token log-probabilities.

    ``top_logprobs`` has shape (tokens, k), sorted descending, padded with -inf where an engine
    returned fewer than k alternatives. ``entropy`` is the full-vocabulary entropy per token (nats)
    where the engine can compute it, else None and signals estimate it from the top-k.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str
    text: str
    token_ids: IntArray
    token_logprobs: FloatArray
    top_logprobs: FloatArray
    entropy: FloatArray | None = None
    finish_reason: FinishReason
    prompt_tokens: int = Field(ge=0, le=TOKEN_COUNT_BOUND)
    completion_tokens: int = Field(ge=0, le=TOKEN_COUNT_BOUND)
    prompt_ms: float = 0.0
    decode_ms: float = 0.0

    @field_validator("top_logprobs")
    @classmethod
    def _two_dimensional(cls, value: np.ndarray) -> np.ndarray:
        if value.ndim == 1 and value.size == 0:
            return value.reshape(0, 0)
        if value.ndim != 2:
            raise ValueError("top_logprobs must have shape (tokens, k)")
        return value

    @model_validator(mode="after")
    def _lengths_agree(self) -> Generation:
        n = len(self.token_logprobs)
        if len(self.token_ids) != n or self.top_logprobs.shape[0] != n:
            raise ValueError(
                f"token_ids ({len(self.token_ids)}), token_logprobs ({n}) and top_logprobs "
                f"({self.top_logprobs.shape[0]}) must have one entry per generated token"
            )
        if self.entropy is not None and len(self.entropy) != n:
            raise ValueError(f"entropy has {len(self.entropy)} entries for {n} tokens")
        return self


class Signals(BaseModel):
    """Confidence signals of one answer (see ``cascade.signals`` for definitions)."""

    n_tokens: int
    n_words: int
    mean_logprob: float
    min_logprob: float
    mean_entropy: float
    max_entropy: float
    first_token_margin: float


class StageLatency(BaseModel):
    """Milliseconds spent in one stage of routing."""

    stage: str
    ms: float


class TierAttempt(BaseModel):
    """One tier an answer passed through, with what it cost."""

    tier: str
    model: str
    decision: Decision | None
    confidence: float | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    error: str | None = None


class RoutedAnswer(BaseModel):
    """The answer returned to the caller, with the full routing record."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    request_id: str
    tenant: str
    answer: str
    tier: str
    model: str
    confidence: float | None
    signals: Signals | None
    reason: str
    cost: float
    degraded: bool = False
    cache_hit: bool = False
    batch_size: int = Field(default=1, ge=1, description="queries in the first-tier batch this one went in")
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    attempts: list[TierAttempt]
    latency: list[StageLatency]
