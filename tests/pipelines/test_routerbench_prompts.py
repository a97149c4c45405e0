"""Embedding what distinguishes a request: shared-block stripping and the on-disk embedding cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from pipelines.embedding_cache import CachedEmbedder, text_key
from pipelines.prompt_prefix import (
    SharedLines,
    common_prefix,
    common_suffix,
    mean_pairwise_cosine_distance,
    strip_common,
    unwrap,
)

FEW_SHOT = "Q: 2+2?\nA) 3\nB) 4\nAnswer:\nB\n\nQ: capital of France?\nA) Paris\nB) Rome\nAnswer:\nA\n\n"
INSTRUCTION = "Print only one letter.\nAnswer:"


def test_unwrap_reads_a_python_list_literal_and_leaves_other_text_alone() -> None:
    assert unwrap("['first line\\nsecond', 'more']") == "first line\nsecond\nmore"
    assert unwrap("[not a literal]") == "[not a literal]"
    assert unwrap("plain prompt") == "plain prompt"
    assert unwrap("['unterminated") == "['unterminated"


def test_common_prefix_stops_at_a_line_boundary() -> None:
    texts = [FEW_SHOT + "Q: colour of the sky?", FEW_SHOT + "Q: colour of grass?"]
    assert common_prefix(texts) == FEW_SHOT  # not "...Q: colour of "
    assert common_prefix(["same", "same"]) == ""
    assert common_prefix(["Write a function to sort", "Write a function to add"]) == ""  # short one-line prefix kept
    long_head = "You are a careful assistant " * 10
    assert common_prefix([long_head + "sort a list", long_head + "add numbers"], min_word_cut=50) == long_head
    assert common_suffix(["x\n" + INSTRUCTION, "y\n" + INSTRUCTION]) == "\n" + INSTRUCTION


def test_strip_common_works_per_group_and_keeps_prompts_it_would_empty() -> None:
    prompts = [FEW_SHOT + "Q: sky?\n" + INSTRUCTION, FEW_SHOT + "Q: grass?\n" + INSTRUCTION,
               "Write a function to sort a list.", "Write a function to add two numbers.", "lonely"]
    tails = strip_common(prompts, ["arc", "arc", "mbpp", "mbpp", "other"])
    assert tails == ["Q: sky?", "Q: grass?", "Write a function to sort a list.",
                     "Write a function to add two numbers.", "lonely"]
    with pytest.raises(ValueError):
        strip_common(prompts, ["arc"])


def test_shared_lines_learned_without_labels_apply_to_unseen_prompts() -> None:
    train = [FEW_SHOT + f"Q: question {i}?\nA) x{i}\nB) y{i}\n" + INSTRUCTION for i in range(30)]
    train += [f"Write a function number {i}." for i in range(30)]
    shared = SharedLines.fit(train, min_share=0.1, min_count=3)
    assert "Print only one letter." in shared.lines and "Q: 2+2?" in shared.lines
    assert not any("question" in line or "function" in line for line in shared.lines)
    unseen = FEW_SHOT + "Q: why is the sea salty?\nA) rivers\nB) rain\n" + INSTRUCTION
    assert shared.strip([unseen, "Write a function to fly."]) == ["Q: why is the sea salty?\nA) rivers\nB) rain",
                                                                  "Write a function to fly."]
    assert shared.strip([FEW_SHOT]) == [FEW_SHOT.strip()]  # nothing but shared lines: the text is kept


def test_mean_pairwise_cosine_distance_by_hand() -> None:
    assert mean_pairwise_cosine_distance(np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(0.0)
    assert mean_pairwise_cosine_distance(np.array([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx(1.0)
    three = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # pairs: 1, 1, 2
    assert mean_pairwise_cosine_distance(three) == pytest.approx(4 / 3)


class CountingEmbedder:
    """Deterministic fake encoder that records what it was asked to embed."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], np.float32)


def test_cache_embeds_each_text_once_and_survives_a_new_process(tmp_path: Path) -> None:
    inner = CountingEmbedder()
    cache = CachedEmbedder(inner, encoder="fake", folder=tmp_path)
    first = cache.embed(["alpha", "beta", "alpha"])
    assert inner.calls == [["alpha", "beta"]] and first.shape == (3, 3)
    assert np.array_equal(first[0], first[2])
    again = cache.embed(["beta", "gamma"])
    assert inner.calls[-1] == ["gamma"] and np.array_equal(again[0], first[1])
    fresh_inner = CountingEmbedder()
    reloaded = CachedEmbedder(fresh_inner, encoder="fake", folder=tmp_path).embed(["gamma", "alpha", "beta"])
    assert fresh_inner.calls == [] and np.array_equal(reloaded[1], first[0])
    other_encoder = CountingEmbedder()
    CachedEmbedder(other_encoder, encoder="other", folder=tmp_path).embed(["alpha"])
    assert other_encoder.calls == [["alpha"]], "vectors are keyed by encoder as well as text"
    assert text_key("fake", "alpha") != text_key("other", "alpha")
    assert not list(tmp_path.rglob("*.tmp.npz")), "no temporary shard is left behind"


@pytest.mark.integration
def test_stripped_arc_prompts_no_longer_collapse_to_one_vector(data_dir: Path, tmp_path: Path) -> None:
    from cascade.embeddings import MiniLMEmbedder
    from pipelines.datasets import load_routerbench

    table = load_routerbench([data_dir / "routerbench" / "arc_challenge_test.csv"])
    prompts = [unwrap(p) for p in table.prompts[:24]]
    shared = SharedLines.fit([unwrap(p) for p in table.prompts])
    embedder = CachedEmbedder(MiniLMEmbedder(), folder=tmp_path)
    whole = mean_pairwise_cosine_distance(embedder.embed(prompts))
    stripped = mean_pairwise_cosine_distance(embedder.embed(shared.strip(prompts)))
    assert whole < 0.01, f"whole ARC prompts embed to nearly one vector (mean cosine distance {whole:.4f})"
    assert stripped > 0.5, f"stripped prompts should spread out, got {stripped:.3f}"
    grouped = mean_pairwise_cosine_distance(embedder.embed(strip_common(prompts)))
    assert grouped > 0.5
