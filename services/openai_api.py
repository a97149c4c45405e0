"""OpenAI request and response shapes for the router, and their translation to and from the core.

Requests carry two extra fields an ``openai`` client sends through ``extra_body``: ``context``
(documents the answer must come from) and ``routing`` (debug overrides: force a tier, set a
threshold), allowed only where the tenant's profile permits. Responses carry a ``routing`` object.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cascade.schemas import (
    MAX_SEED,
    GenerationParams,
    Message,
    Query,
    RoutedAnswer,
    RoutingControls,
    Text,
    sampling_temperature,
)

ROUTER_MODEL = "cascade"


class ApiError(Exception):
    """A client error answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": printable(self.message), "type": self.kind,
                          "param": None if self.param is None else printable(self.param), "code": self.code}}


def printable(text: str) -> str:
    """``text`` made encodable as UTF-8 (a lone surrogate becomes U+FFFD), so no answer fails to encode."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


class ErrorDetail(BaseModel):
    """The ``error`` object of every 4xx and 5xx answer (OpenAI's shape)."""

    message: str
    type: str
    param: str | None = Field(description="the request field at fault, dotted")
    code: str | None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


_STATUS = {
    400: "an empty question, max_tokens over the limit, or a value the server does not support",
    401: "missing or unknown API key",
    403: "the tenant's plan does not allow this",
    404: "unknown model, or no such file, batch, job or request id for this tenant, or no cache on this server",
    409: "the batch is already finished",
    413: "request body, upload, file lines or prompt over this server's limits (the limit is in the message)",
    422: "a field is missing, malformed or out of range (param names it)",
    429: "over the tenant's rate limit or queue quota; see Retry-After",
    503: "no model pool could answer, or a store this call needs is down; see Retry-After",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers."""
    return {code: {"model": ErrorResponse, "description": _STATUS[code]} for code in codes}


class RoutingOverride(BaseModel):
    """Per-request routing overrides for debugging (``extra_body={"routing": {...}}``)."""

    model_config = ConfigDict(extra="forbid")

    tier: Text | None = Field(default=None, description="answer from this tier only")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="escalate below this confidence")


class TextPart(BaseModel):
    """One text part of a message's content list."""

    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    """A chat message as clients send it: string content or a list of text parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def core(self) -> Message:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return Message(role="system" if self.role == "developer" else self.role, content=text)


class _GenerationRequest(BaseModel):
    """Fields shared by chat and text completions; unknown OpenAI parameters are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: Text = ROUTER_MODEL
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n: Literal[1] = 1
    stream: bool = False
    context: list[Text] = Field(default_factory=list, max_length=64)
    routing: RoutingOverride | None = None
    progressive: bool = Field(default=False, description="return an escalated request's small answer at once, "
                                                         "marked provisional; the final answer follows as a job")

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value: str | list[str] | None) -> str | list[str] | None:
        """At most 4, none empty (an empty one stops before the first token; vLLM refuses it)."""
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        if value == "" or (isinstance(value, list) and "" in value):
            raise ValueError("a stop sequence must not be empty")
        return value

    def params(self, defaults: GenerationParams, max_tokens_limit: int) -> GenerationParams:
        """Generation parameters: the request's where given, else the server's defaults."""
        max_tokens = self.max_completion_tokens or self.max_tokens or defaults.max_tokens
        if max_tokens > max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} exceeds this server's limit of {max_tokens_limit}",
                           param="max_tokens")
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return defaults.model_copy(update={
            "max_tokens": max_tokens,
            "temperature": defaults.temperature if self.temperature is None else sampling_temperature(self.temperature),
            "top_p": defaults.top_p if self.top_p is None else self.top_p,
            "stop": defaults.stop if stop is None else stop,
            "seed": defaults.seed if self.seed is None else self.seed,
        })


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``: one prompt, or a list answered as one choice each."""

    prompt: Text | list[Text] = Field(json_schema_extra={  # a question: not empty, not only whitespace
        "anyOf": [{"type": "string", "minLength": 1, "pattern": r"\S"},
                  {"type": "array", "items": {"type": "string", "minLength": 1, "pattern": r"\S"},
                   "minItems": 1, "maxItems": 64}]})

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 64:
            raise ValueError("a prompt list needs 1 to 64 prompts")
        return value


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: the outcome of an answered request."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [{"required": ["correct"], "properties": {"correct": {"type": "boolean"}}},
                  {"required": ["score"], "properties": {"score": {"type": "number"}}}]})

    request_id: Text = Field(min_length=1, max_length=128)
    correct: bool | None = None
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    source: Text = Field(default="user", max_length=64)

    @model_validator(mode="after")
    def _has_outcome(self) -> FeedbackRequest:
        if self.correct is None and self.score is None:
            raise ValueError("feedback needs 'correct' or 'score'")
        return self


def _built(build: Any, param: str) -> list[Query]:
    try:
        return list(build())
    except ValidationError as error:
        problem = error.errors()[0]
        message = str(problem.get("msg", "invalid request")).removeprefix("Value error, ")
        raise ApiError(400, message, param=param) from None


def chat_queries(request: ChatCompletionRequest, tenant: str, params: GenerationParams,
                 controls: RoutingControls) -> list[Query]:
    """The core query of a chat request; 400 naming ``messages`` when there is no question."""
    messages = [m.core() for m in request.messages]
    users = [m for m in messages if m.role == "user"]
    if not users or not users[-1].content.strip():
        raise ApiError(400, "messages has no user message with text: there is no question to answer",
                       param="messages")
    return _built(lambda: [Query(tenant=tenant, messages=messages, context=request.context, params=params,
                                 routing=controls)], "messages")


def completion_queries(request: CompletionRequest, tenant: str, params: GenerationParams,
                       controls: RoutingControls) -> list[Query]:
    """One core query per prompt; 400 naming ``prompt`` when a prompt is empty."""
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            where = "prompt" if isinstance(request.prompt, str) else f"prompt.{i}"
            raise ApiError(400, f"{where} is empty: there is no question to answer", param=where)
    return _built(lambda: [Query(tenant=tenant, prompt=p, context=request.context, params=params, routing=controls)
                           for p in prompts], "prompt")


def prompt_chars(query: Query) -> int:
    """Characters the model is given: the prompt or every message (the question once), and the context."""
    text = len(query.prompt) if query.prompt is not None else sum(len(m.content) for m in query.messages or [])
    return text + sum(len(c) for c in query.context)


def check_prompt_size(query: Query, limit: int, param: str) -> None:
    """413 naming ``param`` when the query is longer than ``limit`` characters."""
    size = prompt_chars(query)
    if size > limit:
        raise ApiError(413, f"prompt of {size} characters exceeds this server's limit of {limit}",
                       param=param, code="prompt_too_long")


def routing_object(answer: RoutedAnswer) -> dict[str, Any]:
    """The ``routing`` object every response carries."""
    latency: dict[str, float] = {}
    for stage in answer.latency:
        latency[stage.stage] = round(latency.get(stage.stage, 0.0) + stage.ms, 3)
    return {
        "request_id": answer.request_id,
        "tenant": answer.tenant,
        "tier": answer.tier,
        "model": answer.model,
        "confidence": answer.confidence,
        "signals": answer.signals.model_dump() if answer.signals else None,
        "reason": answer.reason,
        "cost": answer.cost,
        "cache_hit": answer.cache_hit,
        "degraded": answer.degraded,
        "batch_size": answer.batch_size,
        "attempts": [a.model_dump() for a in answer.attempts],
        "latency_ms": latency,
    }


def _usage(answers: list[RoutedAnswer]) -> dict[str, int]:
    prompt = sum(a.prompt_tokens for a in answers)
    completion = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(answer: RoutedAnswer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


def chat_response(answer: RoutedAnswer, routing: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{answer.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                     "finish_reason": _finish_reason(answer), "logprobs": None}],
        "usage": _usage([answer]),
        "routing": routing or routing_object(answer),
    }


def completion_response(answers: list[RoutedAnswer]) -> dict[str, Any]:
    """One text completion with a choice per prompt; ``routing`` is the first's, ``routings`` all."""
    return {
        "id": f"cmpl-{answers[0].request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": answers[0].model,
        "choices": [{"index": i, "text": a.answer, "finish_reason": _finish_reason(a), "logprobs": None}
                    for i, a in enumerate(answers)],
        "usage": _usage(answers),
        "routing": routing_object(answers[0]),
        "routings": [routing_object(a) for a in answers],
    }


Shape = Literal["chat", "completion"]


def response_of(shape: Shape, answer: RoutedAnswer, routing: dict[str, Any] | None = None) -> dict[str, Any]:
    """One answer as the endpoint it was asked through would answer it (a progressive job's bodies)."""
    if shape == "chat":
        return chat_response(answer, routing)
    body = completion_response([answer])
    if routing is not None:
        body["routing"] = body["routings"][0] = {**body["routings"][0], **routing}
    return body


def _pieces(text: str) -> list[str]:
    """The answer in word-sized pieces, whitespace kept, so streamed pieces join to the text."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def job_event(job: dict[str, Any]) -> bytes:
    """The server-sent event carrying a progressive request's final answer."""
    return _event({"object": "cascade.job", "id": job["id"], "status": job["status"],
                   "response": job.get("response")})


def chat_stream(answer: RoutedAnswer, routing: dict[str, Any] | None = None, done: bool = True) -> Iterator[bytes]:
    """Server-sent events of a routed chat answer: role and routing first, then the text, then the end."""
    base = {"id": f"chatcmpl-{answer.request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": answer.model}
    yield _event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None}], "routing": routing or routing_object(answer)})
    for piece in _pieces(answer.answer):
        yield _event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    yield _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(answer)}],
                  "usage": _usage([answer])})
    if done:
        yield DONE


def completion_stream(answers: list[RoutedAnswer]) -> Iterator[bytes]:
    """Server-sent events of routed text completions, one choice index per prompt."""
    base = {"id": f"cmpl-{answers[0].request_id}", "object": "text_completion", "created": int(time.time()),
            "model": answers[0].model}
    for i, answer in enumerate(answers):
        yield _event({**base, "choices": [{"index": i, "text": "", "finish_reason": None, "logprobs": None}],
                      "routing": routing_object(answer)})
        for piece in _pieces(answer.answer):
            yield _event({**base, "choices": [{"index": i, "text": piece, "finish_reason": None, "logprobs": None}]})
        yield _event({**base, "choices": [{"index": i, "text": "", "finish_reason": _finish_reason(answer),
                                           "logprobs": None}]})
    yield DONE
