"""Vectorized signals agree with the per-answer reference on random ragged batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.schemas import Generation
from cascade.signals import (
    LOG_FLOOR,
    SIGNAL_NAMES,
    TokenBatch,
    compute_signals,
    signals_of,
    word_counts,
)
from tests.reference_signals import reference_signals

TEXT_ALPHABET = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
SPACES = st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\x1c"])


@st.composite
def generations(draw: st.DrawFn, max_k: int) -> Generation:
    n = draw(st.integers(0, 6))
    k = draw(st.integers(0, max_k))
    tops, chosen = [], []
    for _ in range(n):
        weights = draw(st.lists(st.floats(0.01, 1.0), min_size=k + 1, max_size=k + 1))
        probs = np.array(weights[:k]) / sum(weights) if k else np.zeros(0)
        tops.append(np.sort(np.log(probs))[::-1] if k else probs)
        chosen.append(draw(st.floats(-12.0, 0.0)) if not k or draw(st.booleans()) else float(tops[-1][0]))
    full_entropy = draw(st.booleans())
    words = draw(st.lists(st.text(TEXT_ALPHABET.filter(lambda c: not c.isspace()), min_size=1, max_size=4),
                          max_size=5))
    separators = draw(st.lists(st.text(SPACES, min_size=1, max_size=2), min_size=len(words) + 1,
                               max_size=len(words) + 1))
    text = separators[0] + "".join(w + s for w, s in zip(words, separators[1:], strict=True))
    return Generation(
        model="m",
        text=draw(st.sampled_from([text, text.strip(), ""])),
        token_ids=list(range(n)),
        token_logprobs=chosen,
        top_logprobs=np.array(tops, np.float32).reshape(n, k),
        entropy=[draw(st.floats(0.0, 10.0)) for _ in range(n)] if full_entropy else None,
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=n,
    )


@st.composite
def batches(draw: st.DrawFn) -> list[Generation]:
    max_k = draw(st.sampled_from([0, 1, 2, 5]))
    return draw(st.lists(generations(max_k), min_size=0, max_size=8))


@settings(max_examples=300, deadline=None)
@given(batches())
def test_vectorized_signals_match_reference(batch: list[Generation]) -> None:
    vectorized = signals_of(batch)
    assert vectorized.values.shape == (len(batch), len(SIGNAL_NAMES))
    for i, generation in enumerate(batch):
        expected = reference_signals(generation)
        got = vectorized.row(i)
        for name in SIGNAL_NAMES:
            assert getattr(got, name) == pytest.approx(getattr(expected, name), rel=1e-4, abs=1e-4), (
                name, generation)


def test_empty_answer_has_zero_signals() -> None:
    empty = Generation(model="m", text="", token_ids=[], token_logprobs=[], top_logprobs=np.zeros((0, 3)),
                       finish_reason="stop", prompt_tokens=3, completion_tokens=0)
    single = Generation(model="m", text="Paris", token_ids=[7], token_logprobs=[-0.1],
                        top_logprobs=[[-0.1, -2.5, -3.0]], finish_reason="stop", prompt_tokens=3,
                        completion_tokens=1)
    values = signals_of([empty, single])
    assert values.row(0).model_dump() == dict.fromkeys(SIGNAL_NAMES, 0)
    assert values.row(1).n_tokens == 1 and values.row(1).n_words == 1
    assert values.row(1).first_token_margin == pytest.approx(2.4)
    assert values.row(1).mean_logprob == pytest.approx(-0.1)


def test_topk_entropy_counts_the_remaining_mass_as_one_bucket() -> None:
    top = np.log(np.array([[0.5, 0.25]], np.float32))
    generation = Generation(model="m", text="a", token_ids=[1], token_logprobs=[math.log(0.5)],
                            top_logprobs=top, finish_reason="stop", prompt_tokens=1, completion_tokens=1)
    expected = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 0.25 * math.log(0.25))
    assert signals_of([generation]).row(0).mean_entropy == pytest.approx(expected, rel=1e-5)


def test_full_vocabulary_entropy_takes_precedence_over_topk() -> None:
    generation = Generation(model="m", text="a b", token_ids=[1, 2], token_logprobs=[-0.1, -0.2],
                            top_logprobs=[[-0.1], [-0.2]], entropy=[2.0, 4.0], finish_reason="stop",
                            prompt_tokens=1, completion_tokens=2)
    row = signals_of([generation]).row(0)
    assert (row.mean_entropy, row.max_entropy) == (pytest.approx(3.0), pytest.approx(4.0))


def test_word_counts_match_str_split() -> None:
    texts = ["", "  ", "one", " two  words ", "a\u3000b\u00a0c", "tab\tand\nnewline", "ünïcödé wörds"]
    assert word_counts(texts).tolist() == [len(t.split()) for t in texts]


def test_mixed_topk_widths_are_padded() -> None:
    narrow = Generation(model="m", text="x", token_ids=[1], token_logprobs=[-0.3], top_logprobs=[[-0.3]],
                        finish_reason="stop", prompt_tokens=1, completion_tokens=1)
    wide = Generation(model="m", text="y", token_ids=[1], token_logprobs=[-0.3],
                      top_logprobs=[[-0.3, -1.6, -2.0]], finish_reason="stop", prompt_tokens=1,
                      completion_tokens=1)
    batch = TokenBatch.from_generations([narrow, wide])
    assert batch.top_logprobs.shape == (2, 3)
    assert (batch.top_logprobs[0, 1:] == LOG_FLOOR).all()
    signals = compute_signals(batch)
    assert signals.row(0).model_dump() == pytest.approx(reference_signals(narrow).model_dump(), rel=1e-5)


def test_padded_view_spreads_tokens_by_answer() -> None:
    short = Generation(model="m", text="a", token_ids=[1], token_logprobs=[-0.5], top_logprobs=[[-0.5]],
                       finish_reason="stop", prompt_tokens=1, completion_tokens=1)
    empty = Generation(model="m", text="", token_ids=[], token_logprobs=[], top_logprobs=np.zeros((0, 1)),
                       finish_reason="stop", prompt_tokens=1, completion_tokens=0)
    long = Generation(model="m", text="b c", token_ids=[1, 2], token_logprobs=[-0.1, -0.2],
                      top_logprobs=[[-0.1], [-0.2]], finish_reason="stop", prompt_tokens=1, completion_tokens=2)
    batch = TokenBatch.from_generations([short, empty, long])
    assert batch.mask.tolist() == [[True, False], [False, False], [True, True]]
    assert np.allclose(batch.padded(batch.logprobs, 0.0), [[-0.5, 0.0], [0.0, 0.0], [-0.1, -0.2]])
