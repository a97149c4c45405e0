"""The pre-router in the core router: a query starts at the tier a fitted file picks for its
embedding, within its plan, and says so; the file round-trips and refuses what does not fit."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from cascade.engines.scripted import ScriptedEngine
from cascade.prerouter import PreRouter, PreRouterFile, load, save, start_tiers, strip_shared_lines
from cascade.schemas import Query, RoutingControls
from tests.cascade.test_router import large_script, small_script, two_tier_router


class KeywordEmbedder:
    """Two dimensions: "hard" questions on one axis, the rest on the other (routing logic only)."""

    name = "keyword"
    dimensions = 2
    cheap = True

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += texts
        return np.array([[1.0, 0.0] if "hard" in t else [0.0, 1.0] for t in texts], np.float32)


def two_model_file(shared_lines: tuple[str, ...] = ()) -> PreRouterFile:
    """Model 0 (small tier) is right on the second axis, model 1 (large tier) on the first; cost
    barely matters (λ = 1 dollar per quality point, costs of micro-dollars)."""
    return PreRouterFile(
        models=("small-model", "large-model"), tiers=np.array([0, 1]),
        weights=np.array([[[-5.0, 5.0], [5.0, -5.0]]]), biases=np.zeros((1, 2)),
        cost_coef=np.zeros((3, 2)), cost_intercept=np.log([1e-6, 1e-5]), default_length=0.5, lam=1.0,
        shared_lines=shared_lines)


async def test_a_query_starts_at_the_tier_the_prerouter_picks() -> None:
    small = ScriptedEngine("small-model", small_script)
    router = two_tier_router(small=small)
    router.prerouter = PreRouter(two_model_file(), KeywordEmbedder())
    hard, easy = Query(prompt="hard question"), Query(prompt="easy question")
    answers = await router.route([hard, easy])
    assert [a.tier for a in answers] == ["large", "small"]
    assert [a.tier for a in answers[0].attempts] == ["large"], "the small tier never saw the hard question"
    assert answers[0].reason.startswith("pre-routed to the large tier")
    assert small.calls == [[easy.id]]


async def test_the_plan_and_a_forced_tier_still_decide() -> None:
    router = two_tier_router()
    router.prerouter = PreRouter(two_model_file(), KeywordEmbedder())
    capped = Query(prompt="hard question", routing=RoutingControls(max_tier="small"))
    forced = Query(prompt="easy question", routing=RoutingControls(force_tier="large"))
    capped_answer, forced_answer = await router.route([capped, forced])
    assert capped_answer.tier == "small" and "pre-routed" not in capped_answer.reason
    assert forced_answer.tier == "large" and "forced" in forced_answer.reason


class RefusingEmbedder(KeywordEmbedder):
    """Refuses any batch holding a "refused" question (as a tokenizer may refuse one text)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if any("refused" in t for t in texts):
            raise ValueError("the embedder refuses this text")
        return super().embed(texts)


async def test_a_question_the_embedder_refuses_starts_at_the_first_tier_and_its_batch_mates_are_pre_routed() -> None:
    router = two_tier_router()
    router.prerouter = PreRouter(two_model_file(), RefusingEmbedder())
    answers = await router.route([Query(prompt=p) for p in ("hard question", "refused hard question", "easy")])
    assert [a.attempts[0].tier for a in answers] == ["large", "small", "small"]
    assert answers[0].reason.startswith("pre-routed to the large tier") and "pre-routed" not in answers[1].reason


async def test_a_failing_pre_router_leaves_every_query_to_start_at_the_first_tier() -> None:
    router = two_tier_router()
    router.prerouter = PreRouter(two_model_file(), KeywordEmbedder())
    router.prerouter.file = dataclasses.replace(router.prerouter.file, weights=np.zeros((1, 3, 2)))  # wrong shape
    answers = await router.route([Query(prompt="hard question"), Query(prompt="easy question")])
    assert [a.attempts[0].tier for a in answers] == ["small", "small"]
    assert not any("pre-routed" in a.reason for a in answers)


def test_shared_lines_are_stripped_before_embedding(tmp_path: Path) -> None:
    file = two_model_file(shared_lines=("Answer with one word.", "Example: easy question -> yes"))
    save(file, tmp_path / "router.json")
    loaded = load(tmp_path / "router.json")
    assert loaded.shared_lines == file.shared_lines and np.array_equal(loaded.weights, file.weights)
    embedder = KeywordEmbedder()
    prerouter = PreRouter(loaded, embedder)
    prompt = "Answer with one word.\nExample: easy question -> yes\nWhat is hard here?"
    assert prerouter.texts([prompt]) == ["What is hard here?"]
    assert strip_shared_lines("Answer with one word.", frozenset(file.shared_lines)) == "Answer with one word."
    assert start_tiers(loaded, embedder.embed(prerouter.texts([prompt]))).tolist() == [1]


def test_a_file_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fitted on 2-d embeddings"):
        PreRouter(two_model_file(), type("Wide", (KeywordEmbedder,), {"dimensions": 3})())
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="is not a cascade-prerouter/1 file"):
        load(tmp_path / "other.json")


async def test_without_a_prerouter_nothing_changes() -> None:
    large = ScriptedEngine("large-model", large_script)
    answers = await two_tier_router(large=large).route([Query(prompt="hard question")])
    assert [a.tier for a in answers[0].attempts] == ["small", "large"] and "pre-routed" not in answers[0].reason
