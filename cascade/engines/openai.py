"""Any OpenAI-compatible endpoint (vLLM, llama.cpp's server, a cloud LLM) over one pooled aiohttp
session per engine.

aiohttp rather than httpx on this path: it is already installed with Ray Serve, and a keep-alive
call costs about a third of httpx's client CPU (0.17–0.19 ms against 0.60–0.63 ms per call to a
local backend, measured on the 2-core CPU machines), which is most of the router's own cost when
the tier is a remote engine called from the ingress. Calls are HTTP/1.1 over up to
``max_concurrency`` kept-alive connections."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import aiohttp
import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade.engines.base import Deadline, EngineError, PromptTooLongError, each_alone
from cascade.prompts import chat_messages
from cascade.schemas import Generation, Query

log = logging.getLogger(__name__)
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_FINISH = {"stop": "stop", "length": "length", "eos": "stop", "content_filter": "stop", "tool_calls": "stop"}


class OpenAIEngine:
    """Chat completions with ``logprobs``/``top_logprobs``; retries with backoff on 429 and 5xx.

    OpenAI's chat API returns tokens as strings, not ids: ``token_ids`` are -1. Entropy is
    estimated from the top-k by the signals module.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 64,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._headers = {"Content-Type": "application/json"} | (
            {"Authorization": f"Bearer {api_key}"} if api_key else {})
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_concurrency = max_concurrency
        self._client: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(max_concurrency)

    async def start(self) -> None:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_concurrency, limit_per_host=self._max_concurrency))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def health(self) -> dict[str, object]:
        return {"engine": "openai", "model": self.model,
                "ready": self._client is not None}

    async def generate(self, queries: Sequence[Query], deadline: Deadline | None = None) -> list[Generation]:
        """Each query is its own call: one that fails or runs late leaves the others their answers."""
        await self.start()
        return await each_alone([(q.id, self._generate_one(q)) for q in queries], deadline, self.model)

    async def _generate_one(self, query: Query) -> Generation:
        params = query.params
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(query),
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "logprobs": True,
            "top_logprobs": params.top_logprobs,
        }
        if params.stop:
            payload["stop"] = params.stop
        if params.seed is not None:
            payload["seed"] = params.seed
        started = time.perf_counter()
        async with self._slots:
            body = await self._post_with_retries("/chat/completions", payload, query.id)
        return _parse_chat_completion(body, self.model, params.top_logprobs,
                                      (time.perf_counter() - started) * 1000)

    async def _post_with_retries(self, path: str, payload: dict[str, Any], query_id: str) -> dict[str, Any]:
        """The endpoint's JSON answer. Errors name the model, the query and the kind of failure (an
        HTTP status, a client error's type); the endpoint's address and its own error text, which a
        caller of the router must not see, are logged here instead."""
        assert self._client is not None
        last_error = cause = "no attempt made"
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._retry_delay(attempt, retry_after))
            retry_after = None
            try:
                async with self._client.post(self.base_url + path, data=orjson.dumps(payload)) as response:
                    status, headers, content = response.status, response.headers, await response.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                last_error, cause = type(error).__name__, f"{type(error).__name__}: {error}"
                continue
            if status == 200:
                try:
                    return dict(orjson.loads(content))
                except (orjson.JSONDecodeError, TypeError, ValueError):
                    raise EngineError(f"{self.model} answered query {query_id} with a body that is "
                                      "not a JSON object") from None
            text = content.decode("utf-8", "replace")
            last_error, cause = f"HTTP {status}", f"HTTP {status}: {text[:500]}"
            if status in RETRYABLE_STATUS:
                retry_after = _retry_after_seconds(headers)
                continue
            if status == 400 and "context" in text.lower():
                raise PromptTooLongError(query_id, -1, payload["max_tokens"], -1) from None
            log.warning("%s%s refused query %s: %s", self.base_url, path, query_id, cause)
            raise EngineError(f"{self.model} refused query {query_id}: {last_error}")
        log.warning("%s%s failed query %s after %d attempts: %s", self.base_url, path, query_id,
                    self.max_retries + 1, cause)
        raise EngineError(f"{self.model} failed query {query_id} after {self.max_retries + 1} attempts: {last_error}")

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = self.backoff_s * 2 ** (attempt - 1)
        return min(max(backoff, retry_after or 0.0), 30.0)


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _parse_chat_completion(body: dict[str, Any], model: str, k: int, elapsed_ms: float) -> Generation:
    """A Generation from a chat completion; alternatives beyond the requested k are dropped (some
    servers append the sampled token to the top-k when it falls outside it). A reply that does not
    make one (a missing field, a logprob that is not a number, a token count out of bounds) is an
    ``EngineError`` of this query alone."""
    try:
        choice = body["choices"][0]
        text = (choice["message"].get("content") or "").strip()
        content = (choice.get("logprobs") or {}).get("content") or []
        top = np.full((len(content), k), -np.inf, np.float32)
        for row, token in enumerate(content):
            values = sorted((alt["logprob"] for alt in token.get("top_logprobs") or []), reverse=True)[:k]
            top[row, : len(values)] = values
        usage = body.get("usage") or {}
        return Generation(
            model=str(body.get("model") or model),
            text=text,
            token_ids=np.full(len(content), -1, np.int64),
            token_logprobs=np.array([t["logprob"] for t in content], np.float32),
            top_logprobs=top,
            finish_reason=_FINISH.get(str(choice.get("finish_reason")), "stop"),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", len(content))),
            decode_ms=elapsed_ms,
        )
    except KeyError as error:
        raise EngineError(f"malformed chat completion from {model}: missing {error}") from None
    except ValidationError as error:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'generation'}: {e['msg']}" for e in error.errors())
        raise EngineError(f"malformed chat completion from {model}: {fields}") from None
    except (IndexError, TypeError, AttributeError, ValueError, OverflowError) as error:
        raise EngineError(f"malformed chat completion from {model}: a field of the wrong type or size "
                          f"({type(error).__name__})") from None


class OpenAIConfig(BaseModel):
    """``engine: {kind: openai, ...}``: any OpenAI-compatible endpoint (a hosted API, a vLLM server)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai"] = "openai"
    remote: ClassVar[bool] = True  # served elsewhere over HTTP: no process or device of its own here
    model: str = Field(description="the served model id")
    base_url: str = Field(description="e.g. http://vllm:8000/v1")
    api_key: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    max_concurrency: int = Field(default=64, ge=1, description="requests in flight (and pooled connections)")

    def build(self) -> OpenAIEngine:
        return OpenAIEngine(self.base_url, self.model, api_key=self.api_key, timeout_s=self.timeout_s,
                            max_retries=self.max_retries, max_concurrency=self.max_concurrency)
