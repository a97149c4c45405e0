"""Pre-generation routing in the serving path: the tier each query starts at, from its embedding.

A fitted ranking router is a file (``cascade-prerouter/1``, JSON; ``cascade routerbench
--export-prerouter`` writes one) holding per-model logit weights of an ensemble, a ridge cost
model, the dollars-to-quality rate λ of its operating point, the tier each model maps to, and the
lines that many training prompts shared (few-shot blocks, system prompts), which are stripped from
a question before it is embedded. A query starts at the tier of its best model by
``P(correct) − λ · cost`` — one einsum on the batch, numpy only. The router then cascades from
there as usual. The embedding is the semantic cache's when both use the same embedder, so a
request is embedded once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from pydantic import BaseModel, Field

from cascade.embeddings import Embedder, EmbedderConfig, MiniLMConfig

FORMAT = "cascade-prerouter/1"
log = logging.getLogger(__name__)


class PreRouterConfig(BaseModel):
    """Where the pre-router's file is and the embedder it was fitted with."""

    path: str = Field(description="a cascade-prerouter/1 file")
    embedder: EmbedderConfig = Field(default_factory=MiniLMConfig, description=(
        "the embedder the file was fitted with (RouterBench fits on MiniLM); shared with the cache when the same"))


@dataclass(frozen=True)
class PreRouterFile:
    """Everything ``start_tiers`` needs."""

    models: tuple[str, ...]
    tiers: np.ndarray  # (models,) tier index each model maps to
    weights: np.ndarray  # (members, d, models) logit weights of each ensemble member
    biases: np.ndarray  # (members, models)
    cost_coef: np.ndarray  # (d + 1, models) ridge on [embedding, length feature] -> log dollars
    cost_intercept: np.ndarray  # (models,)
    default_length: float  # length feature when prompt lengths are not given (training mean)
    lam: float  # dollars-to-quality exchange rate of the operating point
    shared_lines: tuple[str, ...] = ()

    @property
    def dimensions(self) -> int:
        return int(self.weights.shape[1])


def length_feature(prompt_chars: np.ndarray) -> np.ndarray:
    """The prompt-length input of the cost model: log(1 + characters) / 10."""
    return np.log1p(np.asarray(prompt_chars, np.float64)) / 10.0


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def cheapest_best(values: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Index of the highest value along the last axis; among equal values, the lowest cost."""
    best = values.max(axis=-1, keepdims=True)
    return np.argmin(np.where(values >= best, cost, np.inf), axis=-1)


def strip_shared_lines(text: str, shared: frozenset[str]) -> str:
    """``text`` without the lines in ``shared``; a text made only of shared lines keeps its text."""
    kept = [line for line in (raw.strip() for raw in text.splitlines()) if line and line not in shared]
    return "\n".join(kept) if kept else text.strip()


def save(router: PreRouterFile, path: Path) -> None:
    """Write the router as JSON."""
    document = {
        "format": FORMAT, "models": list(router.models), "tiers": router.tiers.tolist(),
        "weights": router.weights.tolist(), "biases": router.biases.tolist(),
        "cost_coef": router.cost_coef.tolist(), "cost_intercept": router.cost_intercept.tolist(),
        "default_length": router.default_length, "lambda": router.lam, "shared_lines": list(router.shared_lines),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document))


def load(path: Path) -> PreRouterFile:
    """Read a router written by ``save``; a wrong format or inconsistent shapes raise ValueError."""
    document = orjson.loads(path.read_bytes())
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    router = PreRouterFile(
        models=tuple(document["models"]), tiers=np.asarray(document["tiers"], np.int64),
        weights=np.asarray(document["weights"], np.float64), biases=np.asarray(document["biases"], np.float64),
        cost_coef=np.asarray(document["cost_coef"], np.float64),
        cost_intercept=np.asarray(document["cost_intercept"], np.float64),
        default_length=float(document["default_length"]), lam=float(document["lambda"]),
        shared_lines=tuple(document.get("shared_lines", ())),
    )
    models = len(router.models)
    members, dimensions = router.weights.shape[:2] if router.weights.ndim == 3 else (0, 0)
    if (router.weights.ndim != 3 or router.weights.shape[2] != models or router.biases.shape != (members, models)
            or router.cost_coef.shape != (dimensions + 1, models) or router.tiers.shape != (models,)
            or router.cost_intercept.shape != (models,)):
        raise ValueError(f"{path}: array shapes do not match {models} models")
    return router


def estimates(router: PreRouterFile, embeddings: np.ndarray,
              prompt_chars: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, models) probability of a correct answer and predicted dollar cost."""
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or x.shape[1] != router.dimensions:
        raise ValueError(f"embeddings must be (n, {router.dimensions}), got {x.shape}")
    probability = sigmoid(np.einsum("nd,kdm->knm", x, router.weights) + router.biases[:, None]).mean(axis=0)
    length = (np.full(len(x), router.default_length) if prompt_chars is None
              else length_feature(np.asarray(prompt_chars)))
    log_cost = x @ router.cost_coef[:-1] + length[:, None] * router.cost_coef[-1] + router.cost_intercept
    return probability, np.exp(log_cost)


def start_tiers(router: PreRouterFile, embeddings: np.ndarray, prompt_chars: np.ndarray | None = None) -> np.ndarray:
    """(n,) tier index each query starts at: the tier of its best model by P(correct) − λ·cost."""
    probability, cost = estimates(router, embeddings, prompt_chars)
    return router.tiers[cheapest_best(probability - router.lam * cost, cost)]


class PreRouter:
    """A pre-router file with its embedder, for the router's first pass."""

    def __init__(self, file: PreRouterFile, embedder: Embedder) -> None:
        if embedder.dimensions != file.dimensions:
            raise ValueError(f"the pre-router was fitted on {file.dimensions}-d embeddings; the embedder "
                             f"{embedder.name} gives {embedder.dimensions}")
        self.file = file
        self.embedder = embedder
        self._shared = frozenset(file.shared_lines)

    @classmethod
    def from_config(cls, config: PreRouterConfig) -> PreRouter:
        """The file and its embedder, loaded now rather than on the first request."""
        embedder = config.embedder.build()
        embedder.embed(["warm-up"])
        return cls(load(Path(config.path)), embedder)

    def texts(self, questions: Sequence[str]) -> list[str]:
        """What is embedded: each question without the lines the training prompts shared."""
        return [strip_shared_lines(q, self._shared) for q in questions]

    def start_tiers(self, vectors: np.ndarray, prompt_chars: np.ndarray | None = None) -> np.ndarray:
        return start_tiers(self.file, vectors, prompt_chars)

    def starts(self, vectors: np.ndarray, query_ids: Sequence[str]) -> list[int]:
        """The start tier of each query by its row of ``vectors``; the first tier where the row is NaN (a
        question not embedded), and for all of them if the pre-router fails (it only saves a tier's call)."""
        starts = [0] * len(vectors)
        embedded = np.flatnonzero(~np.isnan(vectors).any(axis=1))
        if not len(embedded):
            return starts
        try:
            chosen = self.start_tiers(vectors[embedded])
        except Exception:
            log.exception("pre-router failed; queries %s start at the first tier", list(query_ids))
            return starts
        for i, tier in zip(embedded.tolist(), chosen.tolist(), strict=True):
            starts[i] = int(tier)
        return starts
