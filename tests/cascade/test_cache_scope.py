"""What the cache keys an answer by (pure functions, no Redis): everything that changes the answer
but the question, and which vectors are no vector at all."""

from __future__ import annotations

import numpy as np

from cascade.cache import blank_rows, entry_tags, holds_answers, scope_of
from cascade.schemas import Message, Query


def chat(*turns: tuple[str, str], **fields: object) -> Query:
    return Query(messages=[Message(role=role, content=content) for role, content in turns], **fields)  # type: ignore[arg-type]


def test_the_question_s_place_in_the_conversation_is_part_of_the_scope() -> None:
    asked_first = chat(("user", "Is it safe?"), ("assistant", "No,"))
    answered_first = chat(("assistant", "No,"), ("user", "Is it safe?"))
    assert asked_first.question == answered_first.question
    assert scope_of(asked_first) != scope_of(answered_first)
    assert scope_of(chat(("user", "Is it safe?"))) != scope_of(Query(prompt="Is it safe?")), (
        "a prompt and chat messages reach a base model differently")
    assert scope_of(chat(("user", "Is it safe?"))) == scope_of(chat(("user", "Is it?"))), "only the question differs"


def test_a_zero_vector_is_no_vector() -> None:
    vectors = np.array([[0.0, 0.0], [0.1, 0.0], [np.nan, 1.0]], np.float32)
    assert blank_rows(vectors).tolist() == [True, False, True]


def test_only_redis_7_or_later_holds_answers() -> None:
    """Holding takes SET NX GET and EXPIRE NX (Redis 7); a server that does not say is taken to have them."""
    assert not holds_answers({"redis_version": "6.2.14"})
    assert holds_answers({"redis_version": "7.0.0"}) and holds_answers({"redis_version": "8.2.1"})
    assert not holds_answers({"redis_version": 6.2}) and holds_answers({"redis_version": 7}), "INFO reads numbers"
    assert holds_answers({}) and holds_answers({"redis_version": "unknown"})


def test_the_models_and_prompts_that_made_the_answers_are_part_of_the_partition() -> None:
    """A deployment whose tiers run another model, build the prompt another way or stop elsewhere never
    reads the old answers; moving a tier's server or changing its timeouts keeps them."""
    from cascade.config import TierConfig
    from cascade.engines.openai import OpenAIConfig
    from cascade.factory import answer_source

    def tiers(small: dict[str, object], large_model: str = "big") -> list[TierConfig]:
        return [TierConfig.model_validate({"name": "small", "engine": {"kind": "llamacpp", "model": "smollm2",
                                                                       "prompt_format": "plain", **small}}),
                TierConfig(name="large", engine=OpenAIConfig(model=large_model, base_url="http://a:8000/v1"))]

    source = answer_source(tiers({}))
    changed = [answer_source(tiers({"model": "gemma3-270m"})), answer_source(tiers({"prompt_format": "chat"})),
               answer_source(tiers({"stop": ["\n"]})), answer_source(tiers({}, large_model="bigger"))]
    assert len({source, *changed}) == 5, "each change of model, prompt or stop strings is another source"
    kept = tiers({"threads": 2, "context_window": 4096})
    kept[1] = TierConfig(name="large", engine=OpenAIConfig(model="big", base_url="http://b:9000/v1", timeout_s=5))
    assert answer_source(kept) == source
    query = Query(prompt="Is it safe?")
    assert entry_tags(query, source)["partition"] != entry_tags(query, changed[0])["partition"]
    assert entry_tags(query, source)["scope"] == entry_tags(query, changed[0])["scope"]
