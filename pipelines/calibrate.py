"""``cascade calibrate``: every tier answers every question; one JSON line per question.

Each record holds, per tier, the answer, its signals, exact match and F1, tokens, latency and cost,
plus optional sampled small-model answers for self-consistency. The output file is appended to and
read back on restart, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
from pydantic import BaseModel, Field, ValidationError

from cascade.config import CoreSettings
from cascade.engines.base import PartialGenerationError, PromptTooLongError
from cascade.factory import build_router
from cascade.router import Router, Tier
from cascade.schemas import Generation, GenerationParams, Message, Query, Signals
from cascade.signals import signals_of
from pipelines.datasets import DatasetError, QARecord
from pipelines.metrics import exact_match, token_f1
from pipelines.token_series import TokenSeries

ABSTAIN_INSTRUCTION = "If the context does not contain the answer, reply: unanswerable."


class TierOutcome(BaseModel):
    """One tier's answer to one question and how it scored."""

    tier: str
    model: str
    answer: str
    signals: Signals
    exact_match: float
    f1: float
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    cost: float
    tokens: TokenSeries | None = Field(default=None, description="per-token series; None in older records")


class CalibrationRecord(BaseModel):
    """Every tier's outcome for one question; ``error`` says why a question has none."""

    id: str
    dataset: str
    question: str
    answers: list[str]
    group: str = Field(default="", description="the SQuAD article or HotpotQA question; empty in older records")
    tiers: list[TierOutcome] = Field(default_factory=list)
    samples: list[str] = Field(default_factory=list)
    sample_tokens: int = 0
    error: str | None = None


def query_for(record: QARecord, params: GenerationParams) -> Query:
    """The prompt a user would write for the dataset: SQuAD 2.0 allows abstaining."""
    messages = [Message(role="user", content=record.question)]
    if record.dataset == "squad_v2":
        messages.insert(0, Message(role="system", content=ABSTAIN_INSTRUCTION))
    return Query(id=record.id, messages=messages, context=list(record.context), params=params)


def read_records(path: Path) -> list[CalibrationRecord]:
    """Records already written to a calibration file, plain or gzipped (none if it does not exist). A
    last line that is not a record is one cut off mid-write (a killed run): left out, to be redone.
    Raises ``DatasetError`` naming the file, line and field of any other line that is not a record."""
    if not path.exists():
        return []
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = raw.split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(CalibrationRecord.model_validate_json(line))
        except ValidationError as error:
            if number == len(lines):  # no newline after it: cut off mid-write
                break
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "the line"
            raise DatasetError(f"{path}:{number} is not a calibration record: {field}: {first['msg']}") from None
    return records


def _end_with_newline(path: Path) -> None:
    """Before appending to a plain records file: a last record without its newline gets one; a last line
    that is not a record (cut off mid-write, so ``read_records`` left it out) is cut, to be redone."""
    if path.suffix == ".gz" or not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as file:
        data = file.read()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            CalibrationRecord.model_validate_json(data[start:])
            file.write(b"\n")
        except ValidationError:
            file.truncate(start)


def _outcome(tier: Tier, generation: Generation, signals: Signals, gold: Sequence[str]) -> TierOutcome:
    return TierOutcome(
        tier=tier.name, model=generation.model, answer=generation.text, signals=signals,
        exact_match=exact_match(generation.text, gold), f1=token_f1(generation.text, gold),
        prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
        latency_ms=generation.prompt_ms + generation.decode_ms,
        cost=float(tier.price.cost_of([generation])[0]),
        tokens=TokenSeries.of(generation),
    )


async def _answers(tier: Tier, queries: list[Query]) -> list[Generation | PromptTooLongError]:
    """The tier's answers to a batch; a query too long for the model is its own error, not the batch's."""
    try:
        return list(await tier.engine.generate(queries))
    except PartialGenerationError as partial:  # an engine that calls its model once per query
        for result in partial.results:
            if isinstance(result, Exception) and not isinstance(result, PromptTooLongError):
                raise result from partial
        return [r for r in partial.results if isinstance(r, (Generation, PromptTooLongError))]
    except PromptTooLongError as error:
        if len(queries) == 1:
            return [error]
    return [answer for query in queries for answer in await _answers(tier, [query])]


async def _calibrate_batch(router: Router, records: Sequence[QARecord], params: GenerationParams,
                           samples: int) -> list[CalibrationRecord]:
    """Every tier on a batch of questions (one engine call per tier: vLLM batches it on a GPU)."""
    queries = [query_for(record, params) for record in records]
    results = [CalibrationRecord(id=r.id, dataset=r.dataset, question=r.question, answers=list(r.answers),
                                 group=r.group) for r in records]
    for tier in router.tiers:
        pending = [i for i, result in enumerate(results) if result.error is None]
        answers = await _answers(tier, [queries[i] for i in pending]) if pending else []
        for i, answer in zip(pending, answers, strict=True):
            if isinstance(answer, PromptTooLongError):
                results[i].tiers, results[i].error = [], str(answer)
            else:
                results[i].tiers.append(_outcome(tier, answer, signals_of([answer]).row(0), records[i].answers))
    if samples:
        sampled_params = params.model_copy(update={"temperature": 0.7, "top_logprobs": 0})
        for query, result in zip(queries, results, strict=True):
            if result.error is not None:
                continue
            sampled = await router.tiers[0].engine.generate(
                [query.model_copy(update={"params": sampled_params.model_copy(update={"seed": s})})
                 for s in range(1, samples + 1)])
            result.samples = [g.text for g in sampled]
            result.sample_tokens = sum(g.prompt_tokens + g.completion_tokens for g in sampled)
    return results


async def calibrate(settings: CoreSettings, records: Sequence[QARecord], out: Path, *, samples: int = 0,
                    batch_size: int = 1,
                    on_progress: Callable[[int], None] = lambda done: None) -> list[CalibrationRecord]:
    """Run every tier on every record not yet in ``out``, ``batch_size`` questions per engine call;
    returns all records in the file."""
    _end_with_newline(out)
    done = {r.id for r in read_records(out)}
    todo = [r for r in records if r.id not in done]
    on_progress(len(records) - len(todo))
    router = build_router(settings)
    await router.start()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("ab") as sink:
            for start in range(0, len(todo), batch_size):
                outcomes = await _calibrate_batch(router, todo[start:start + batch_size], settings.generation, samples)
                sink.write(b"".join(orjson.dumps(o.model_dump(mode="json")) + b"\n" for o in outcomes))
                sink.flush()
                on_progress(len(records) - len(todo) + start + len(outcomes))
    finally:
        await router.close()
    return read_records(out)
