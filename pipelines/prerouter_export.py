"""A fitted ranking router as a file the serving path can score with numpy alone.

The file (JSON, ``format: cascade-prerouter/1``) holds the scorers' collapsed weights, the ridge
cost model, the cost weight λ of the operating point, the tier each model maps to, and the shared
lines the caller strips from a prompt before embedding it. ``start_tiers`` takes a batch of query
embeddings (already computed, e.g. the semantic cache's) and returns, per query, the tier to
start at: the tier of ``argmax_m P(correct | x, m) - λ · cost(x, m)`` — one einsum, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from pipelines.prerouters import LAMBDAS, Features, RankingRouter, length_feature, sigmoid, utility_sweep
from pipelines.routing_metrics import operating_points

FORMAT = "cascade-prerouter/1"


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


def export_router(router: RankingRouter, models: Sequence[str], lam: float, tiers: Sequence[int] | None = None,
                  shared_lines: Iterable[str] = (), default_chars: float = 500.0) -> PreRouterFile:
    """The file of a fitted ranking router; ``tiers`` defaults to one tier per model, in model order."""
    ridge = router.cost_model.model
    mapping = np.arange(len(models)) if tiers is None else np.asarray(tiers, np.int64)
    if len(mapping) != len(models) or router.weights.shape[2] != len(models):
        raise ValueError(f"{len(models)} models, {len(mapping)} tiers, router scores {router.weights.shape[2]}")
    return PreRouterFile(
        models=tuple(models), tiers=mapping, weights=router.weights.copy(), biases=router.biases.copy(),
        cost_coef=np.asarray(ridge.coef_, np.float64).T.copy(), cost_intercept=np.asarray(ridge.intercept_, np.float64),
        default_length=float(length_feature(np.array([default_chars]))[0]), lam=float(lam),
        shared_lines=tuple(sorted(shared_lines)),
    )


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
    return router.tiers[utility_sweep(probability, cost, np.array([router.lam]))[0]]


def lambda_for_quality(router: RankingRouter, features: Features, scores: np.ndarray, costs: np.ndarray,
                       target_quality: float) -> float:
    """The λ of the cheapest grid setting whose quality on these outcomes reaches ``target_quality``
    (0, i.e. quality only, when none does)."""
    choices = utility_sweep(router.predict(features).quality, router.cost_model.predict(features), LAMBDAS)
    cost, quality = operating_points(choices, scores, costs)
    reaching = np.flatnonzero(quality >= target_quality - 1e-12)
    return float(LAMBDAS[reaching[np.argmin(cost[reaching])]]) if reaching.size else 0.0
