"""The cache's embedders on their real models: the ONNX Runtime export of MiniLM gives MiniLM's
vectors (int8 weights: nearly), is built once per machine, and is selectable in config; the static
embedder pools a batch as model2vec does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cascade.cache import CacheConfig
from cascade.embeddings import MiniLMEmbedder, OnnxEmbedder, StaticConfig

QUESTIONS = ["In what country is Normandy located?", "When were the Normans in Normandy?",
             "Who was the Norse leader? " * 80]  # the last one is longer than MiniLM reads: truncated alike


@pytest.mark.integration
def test_onnx_minilm_gives_minilms_vectors_and_is_exported_once(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_MODEL_HOME", str(tmp_path))
    reference = MiniLMEmbedder().embed(QUESTIONS)
    exact, quantized = OnnxEmbedder().embed(QUESTIONS), OnnxEmbedder(int8=True).embed(QUESTIONS)
    assert exact.shape == quantized.shape == (3, 384)
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-5)
    assert (np.sum(exact * reference, axis=1) > 0.9999).all()
    assert (np.sum(quantized * reference, axis=1) > 0.99).all()  # per-channel int8: cosine 0.994-0.996 here
    exported = tmp_path / "minilm-onnx-int8" / "model.onnx"
    built = exported.stat().st_mtime_ns
    again = CacheConfig(embedder={"kind": "onnx", "int8": True}).embedder.build()  # type: ignore[arg-type]
    assert again.name == "minilm-onnx-int8"
    assert np.array_equal(again.embed(QUESTIONS), quantized) and exported.stat().st_mtime_ns == built


def test_the_static_embedder_pools_a_batch_as_model2vec_does() -> None:
    """The batch pooling gives model2vec's own vectors (which average float16 rows in float16: within
    1e-3 here), a zero row for a question with no known token, and the same row alone or in a batch."""
    embedder = StaticConfig().build()
    questions = [*QUESTIONS, "", "What is the largest city in France?", "a b " * 3000]
    vectors = embedder.embed(questions)
    reference = np.asarray(embedder._load().encode(questions, show_progress_bar=False), np.float32)
    norms = np.linalg.norm(reference, axis=1, keepdims=True)
    reference = np.divide(reference, norms, out=np.zeros_like(reference), where=norms > 0)
    assert vectors.shape == (6, embedder.dimensions) and vectors.dtype == np.float32
    assert np.abs(vectors - reference).max() < 1e-3
    assert not vectors[3].any() and np.allclose(np.linalg.norm(np.delete(vectors, 3, axis=0), axis=1), 1.0)
    assert np.allclose(embedder.embed(questions[4:5])[0], vectors[4], atol=1e-6)


def test_a_one_thread_embedder_tokenizes_on_its_own_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the static embedder turns Hugging Face tokenizers' thread pool off, unless the user chose."""
    from cascade.embeddings.base import limit_tokenizer_threads

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    embedder = StaticConfig().build()
    embedder._model = None
    embedder.embed(["Which river flows through Paris?"])
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    limit_tokenizer_threads(1)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
