"""``cascade calibrate``: every tier answers every question; one JSON line per question.

Each record holds, per tier, the answer, its signals, exact match and F1, tokens, latency and cost,
plus optional sampled small-model answers for self-consistency. The output file is appended to and
read back on restart, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
from pydantic import BaseModel, Field

from cascade.config import CoreSettings
from cascade.engines.base import PromptTooLongError
from cascade.factory import build_router
from cascade.router import Router, Tier
from cascade.schemas import Generation, GenerationParams, Message, Query, Signals
from cascade.signals import signals_of
from pipelines.datasets import QARecord
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
    """Records already written to a calibration file (none if it does not exist)."""
    if not path.exists():
        return []
    return [CalibrationRecord.model_validate(orjson.loads(line)) for line in path.read_bytes().splitlines()
            if line.strip()]


def _outcome(tier: Tier, generation: Generation, signals: Signals, gold: Sequence[str]) -> TierOutcome:
    return TierOutcome(
        tier=tier.name, model=generation.model, answer=generation.text, signals=signals,
        exact_match=exact_match(generation.text, gold), f1=token_f1(generation.text, gold),
        prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
        latency_ms=generation.prompt_ms + generation.decode_ms,
        cost=float(tier.price.cost_of([generation])[0]),
        tokens=TokenSeries.of(generation),
    )


async def _calibrate_one(router: Router, record: QARecord, params: GenerationParams, samples: int) -> CalibrationRecord:
    query = query_for(record, params)
    result = CalibrationRecord(id=record.id, dataset=record.dataset, question=record.question,
                               answers=list(record.answers), group=record.group)
    try:
        for tier in router.tiers:
            [generation] = await tier.engine.generate([query])
            result.tiers.append(_outcome(tier, generation, signals_of([generation]).row(0), record.answers))
        if samples:
            sampled_params = params.model_copy(update={"temperature": 0.7, "top_logprobs": 0})
            sampled = await router.tiers[0].engine.generate(
                [query.model_copy(update={"params": sampled_params.model_copy(update={"seed": s})})
                 for s in range(1, samples + 1)])
            result.samples = [g.text for g in sampled]
            result.sample_tokens = sum(g.prompt_tokens + g.completion_tokens for g in sampled)
    except PromptTooLongError as error:
        result.tiers, result.error = [], str(error)
    return result


async def calibrate(settings: CoreSettings, records: Sequence[QARecord], out: Path, *, samples: int = 0,
                    on_progress: Callable[[int], None] = lambda done: None) -> list[CalibrationRecord]:
    """Run every tier on every record not yet in ``out``; returns all records in the file."""
    done = {r.id for r in read_records(out)}
    todo = [r for r in records if r.id not in done]
    on_progress(len(records) - len(todo))
    router = build_router(settings)
    await router.start()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("ab") as sink:
            for number, record in enumerate(todo, start=1):
                outcome = await _calibrate_one(router, record, settings.generation, samples)
                sink.write(orjson.dumps(outcome.model_dump(mode="json")) + b"\n")
                sink.flush()
                on_progress(len(records) - len(todo) + number)
    finally:
        await router.close()
    return read_records(out)
