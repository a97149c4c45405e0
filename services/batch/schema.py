"""OpenAI Batch API shapes: input lines to core queries, routed answers to output and error lines, and a
progressive job's final body when its finishing is given up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade.errors import public_message, validation_summary
from cascade.schemas import Query, RoutedAnswer
from services.openai_api import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_queries,
    chat_response,
    check_prompt_size,
    completion_queries,
    completion_response,
    printable,
)
from services.settings import CascadeSettings
from services.tenants import Caller, TenantDirectory

ENDPOINTS = {"/v1/chat/completions", "/v1/completions"}


class BatchCreate(BaseModel):
    """``POST /v1/batches``."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1)
    endpoint: str = Field(json_schema_extra={"enum": ["/v1/chat/completions", "/v1/completions"]})
    completion_window: Literal["24h"] = "24h"  # the only window OpenAI's Batch API has
    metadata: dict[str, str] | None = None


@dataclass(frozen=True)
class ParsedLine:
    """One input line: its ``custom_id`` and query, or the error that stops it."""

    custom_id: str
    query: Query | None = None
    error: dict[str, Any] | None = None
    status: int = 400


def custom_ids(lines: list[bytes], first: int = 0, numbers: Sequence[int] | None = None) -> list[str]:
    """The ``custom_id`` of each line, or ``line-<n>`` where a line has none (it will be an error): n is
    the line's number in the file, ``numbers[i]`` if given, else counted from 1 with ``first`` the index of
    ``lines[0]``. A made-up id that another line's own ``custom_id`` holds gets ``~`` appended until it
    is free, so that it never collides with one (and is not taken for a repeated ``custom_id``)."""
    given: list[str | None] = []
    for line in lines:
        try:
            value = orjson.loads(line).get("custom_id")
        except (orjson.JSONDecodeError, AttributeError):
            value = None
        given.append(value if isinstance(value, str) and value else None)
    taken = {value for value in given if value is not None}
    ids = []
    for i, value in enumerate(given):
        if value is None:
            value = f"line-{numbers[i] if numbers is not None else first + i + 1}"
            while value in taken:
                value += "~"
            taken.add(value)
        ids.append(value)
    return ids


def parse_line(line: bytes, custom_id: str, endpoint: str, caller: Caller, tenants: TenantDirectory,
               settings: CascadeSettings) -> ParsedLine:
    """A query from one line, or an error naming what is wrong with it: the same checks and limits as
    an interactive request (``max_prompt_chars``, ``max_tokens_limit``, valid text, ranges)."""
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        return ParsedLine(custom_id, error={"code": "invalid_json", "message": f"line is not JSON: {error}"})
    if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str) or not item["custom_id"]:
        return ParsedLine(custom_id, error={"code": "missing_custom_id", "message": "line needs a custom_id string"})
    if item.get("method", "POST") != "POST" or item.get("url") != endpoint:
        return ParsedLine(custom_id, error={"code": "invalid_url", "message":
                                            f"line must be a POST to {endpoint}, got {item.get('method')} "
                                            f"{item.get('url')}"})
    try:
        model = ChatCompletionRequest if endpoint == "/v1/chat/completions" else CompletionRequest
        request = model.model_validate(item.get("body"))
        if request.stream:
            raise ApiError(400, "stream is not available in a batch", param="body.stream")
        if isinstance(request, CompletionRequest) and not isinstance(request.prompt, str):
            raise ApiError(400, "a batch line takes one prompt", param="body.prompt")
        controls = tenants.controls(caller, request.model, request.routing)
        params = request.params(settings.generation, settings.server.max_tokens_limit)
        build = chat_queries if isinstance(request, ChatCompletionRequest) else completion_queries
        [query] = build(request, caller.tenant, params, controls)  # type: ignore[arg-type]
        check_prompt_size(query, settings.server.max_prompt_chars,
                          "body.messages" if isinstance(request, ChatCompletionRequest) else "body.prompt")
    except ValidationError as error:
        return ParsedLine(custom_id, error={"code": "invalid_request", "message": validation_summary(error, "body")})
    except ApiError as error:
        param = error.param if error.param is None or error.param.startswith("body") else f"body.{error.param}"
        return ParsedLine(custom_id, error={"code": error.code or "invalid_request", "message": error.message,
                                            "param": param}, status=error.status)
    except ValueError as error:
        return ParsedLine(custom_id, error={"code": "invalid_request", "message": str(error)})
    return ParsedLine(custom_id, query=query)


def output_line(custom_id: str, answer: RoutedAnswer, endpoint: str) -> bytes:
    body = chat_response(answer) if endpoint == "/v1/chat/completions" else completion_response([answer])
    return orjson.dumps({"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id,
                         "response": {"status_code": 200, "request_id": answer.request_id, "body": body},
                         "error": None})


def error_line(custom_id: str, error: dict[str, Any], status_code: int = 400) -> bytes:
    error = {k: printable(v) if isinstance(v, str) else v for k, v in error.items()}
    return orjson.dumps({"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id,
                         "response": {"status_code": status_code, "request_id": None,
                                      "body": {"error": {**error, "type": "invalid_request_error"}}},
                         "error": error})


def batch_object(batch_id: str, tenant: str, request: BatchCreate, total: int) -> dict[str, Any]:
    return {"id": batch_id, "object": "batch", "endpoint": request.endpoint, "errors": None,
            "input_file_id": request.input_file_id, "completion_window": request.completion_window,
            "status": "in_progress", "output_file_id": None, "error_file_id": None,
            "created_at": int(time.time()), "in_progress_at": int(time.time()), "expires_at": None,
            "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": total, "completed": 0, "failed": 0},
            "metadata": request.metadata, "tenant": tenant}


def given_up(provisional: dict[str, Any], tries: int, error: BaseException) -> dict[str, Any]:
    """A progressive job's final response when finishing its escalation failed ``tries`` times with
    ``error`` last: the provisional response, no longer provisional, marked degraded, its routing's
    reason naming the error (a store's or the network's by its type alone: their messages name hosts)."""
    said = type(error).__name__ if isinstance(error, (redis.RedisError, OSError)) else public_message(error)
    reason = f"finishing the escalation failed {tries} times ({said})"

    def final(routing: dict[str, Any]) -> dict[str, Any]:
        before = routing.get("reason")
        return {**routing, "provisional": False, "degraded": True,
                "reason": f"{before}; {reason}" if before else reason}

    body = {**provisional, "routing": final(provisional.get("routing") or {})}
    if provisional.get("routings"):
        body["routings"] = [body["routing"], *provisional["routings"][1:]]
    return body
