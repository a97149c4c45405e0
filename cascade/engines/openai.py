"""Any OpenAI-compatible endpoint (vLLM, llama.cpp's server, a cloud LLM) over httpx async."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cascade.engines.base import EngineError, PromptTooLongError
from cascade.prompts import chat_messages
from cascade.schemas import Generation, Query

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
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout_s)
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(max_concurrency)

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                             timeout=self._timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def health(self) -> dict[str, object]:
        return {"engine": "openai", "model": self.model, "base_url": self.base_url,
                "ready": self._client is not None}

    async def generate(self, queries: Sequence[Query]) -> list[Generation]:
        await self.start()
        return list(await asyncio.gather(*(self._generate_one(q) for q in queries)))

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
        assert self._client is not None
        last_error = "no attempt made"
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._retry_delay(attempt, retry_after))
            retry_after = None
            try:
                response = await self._client.post(path, json=payload)
            except httpx.TransportError as error:
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code == 200:
                return dict(response.json())
            last_error = f"HTTP {response.status_code}: {response.text[:500]}"
            if response.status_code in RETRYABLE_STATUS:
                retry_after = _retry_after_seconds(response)
                continue
            if response.status_code == 400 and "context" in response.text.lower():
                raise PromptTooLongError(query_id, -1, payload["max_tokens"], -1) from EngineError(last_error)
            raise EngineError(f"{self.base_url} refused query {query_id}: {last_error}")
        raise EngineError(
            f"{self.base_url} failed query {query_id} after {self.max_retries + 1} attempts: {last_error}"
        )

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = self.backoff_s * 2 ** (attempt - 1)
        return min(max(backoff, retry_after or 0.0), 30.0)


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _parse_chat_completion(body: dict[str, Any], model: str, k: int, elapsed_ms: float) -> Generation:
    """A Generation from a chat completion; alternatives beyond the requested k are dropped (some
    servers append the sampled token to the top-k when it falls outside it)."""
    try:
        choice = body["choices"][0]
        text = (choice["message"].get("content") or "").strip()
        content = (choice.get("logprobs") or {}).get("content") or []
    except (KeyError, IndexError, TypeError) as error:
        raise EngineError(f"malformed chat completion from {model}: missing {error}") from None
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


class OpenAIConfig(BaseModel):
    """``engine: {kind: openai, ...}``: any OpenAI-compatible endpoint (a hosted API, a vLLM server)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["openai"] = "openai"
    model: str = Field(description="the served model id")
    base_url: str = Field(description="e.g. http://vllm:8000/v1")
    api_key: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)

    def build(self) -> OpenAIEngine:
        return OpenAIEngine(self.base_url, self.model, api_key=self.api_key, timeout_s=self.timeout_s,
                            max_retries=self.max_retries)
