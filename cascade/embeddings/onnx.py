"""The packaged MiniLM through ONNX Runtime: exported on this machine from the PyTorch model on first
use (optionally with int8 weights, ``quantize_dynamic``) and kept under ``CASCADE_MODEL_HOME``; the
same vectors as MiniLM (mean of the token states, unit length) for less CPU per question."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from cascade.embeddings.base import limit_tokenizer_threads, model_home, publish
from cascade.embeddings.minilm import minilm_path

log = logging.getLogger(__name__)
MAX_TOKENS = 256  # what MiniLM reads, as sentence-transformers truncates


class OnnxConfig(BaseModel):
    kind: Literal["onnx"] = "onnx"
    int8: bool = Field(default=False, description="int8 weights (dynamic quantization): faster, a little less exact")
    batch_size: int = Field(default=64, ge=1)
    threads: int = Field(default=1, ge=1)

    def build(self) -> OnnxEmbedder:
        return OnnxEmbedder(int8=self.int8, batch_size=self.batch_size, threads=self.threads)


def export(folder: Path, int8: bool) -> Path:
    """Export MiniLM to ``folder/model.onnx`` unless it is there; concurrent callers each write a
    temporary folder and the first rename wins."""
    target = folder / "model.onnx"
    if target.is_file():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    log.info("exporting MiniLM to ONNX%s in %s (once per machine)", " with int8 weights" if int8 else "", folder)

    class States(torch.nn.Module):
        """MiniLM's token states, with the inputs named (the exporter passes them positionally)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = AutoModel.from_pretrained(minilm_path()).eval()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def build(staging: Path) -> None:
        ids = torch.ones((2, 8), dtype=torch.int64)
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                "states": {0: "batch", 1: "tokens"}}
        exported = staging / ("fp32.onnx" if int8 else "model.onnx")
        torch.onnx.export(States(), (ids, ids), str(exported), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["states"], dynamic_axes=axes)
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(exported), str(staging / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True)
            exported.unlink()

    return publish(folder, build) / "model.onnx"


class OnnxEmbedder:
    """384-d unit vectors from MiniLM on ONNX Runtime, one thread by default."""

    dimensions = 384
    cheap = False

    def __init__(self, *, int8: bool = False, batch_size: int = 64, threads: int = 1) -> None:
        self.int8 = int8
        self.name = "minilm-onnx-int8" if int8 else "minilm-onnx"
        self.batch_size = batch_size
        self.threads = threads
        self._session: Any = None
        self._tokenizer: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._session is None:
            import onnxruntime
            from tokenizers import Tokenizer

            limit_tokenizer_threads(self.threads)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = self.threads
            path = export(model_home() / self.name, self.int8)
            tokenizer = Tokenizer.from_file(str(Path(minilm_path()) / "tokenizer.json"))
            tokenizer.enable_truncation(MAX_TOKENS)
            tokenizer.enable_padding()
            self._tokenizer = tokenizer
            self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return self._session, self._tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors: the mean of the token states, normalized."""
        if not texts:
            return np.zeros((0, self.dimensions), np.float32)
        session, tokenizer = self._load()
        parts = []
        for start in range(0, len(texts), self.batch_size):
            encoded = tokenizer.encode_batch(list(texts[start:start + self.batch_size]))
            ids = np.array([e.ids for e in encoded], np.int64)
            mask = np.array([e.attention_mask for e in encoded], np.int64)
            [states] = session.run(None, {"input_ids": ids, "attention_mask": mask})
            summed = (states * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            parts.append(summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12))
        return np.concatenate(parts).astype(np.float32)
