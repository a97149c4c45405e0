"""A fitted ranking router as a file the serving path can score with numpy alone (the file, its
reading and its scoring live in the core, ``cascade/prerouter.py``; this module writes one).

The file (JSON, ``format: cascade-prerouter/1``) holds the scorers' collapsed weights, the ridge
cost model, the cost weight λ of the operating point, the tier each model maps to, and the shared
lines the caller strips from a prompt before embedding it. ``start_tiers`` takes a batch of query
embeddings (already computed, e.g. the semantic cache's) and returns, per query, the tier to
start at: the tier of ``argmax_m P(correct | x, m) - λ · cost(x, m)`` — one einsum, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from cascade.prerouter import FORMAT, PreRouterFile, estimates, length_feature, load, save, start_tiers
from pipelines.prerouters import LAMBDAS, Features, RankingRouter, utility_sweep
from pipelines.routing_metrics import operating_points


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


def lambda_for_quality(router: RankingRouter, features: Features, scores: np.ndarray, costs: np.ndarray,
                       target_quality: float) -> float:
    """The λ of the cheapest grid setting whose quality on these outcomes reaches ``target_quality``
    (0, i.e. quality only, when none does)."""
    choices = utility_sweep(router.predict(features).quality, router.cost_model.predict(features), LAMBDAS)
    cost, quality = operating_points(choices, scores, costs)
    reaching = np.flatnonzero(quality >= target_quality - 1e-12)
    return float(LAMBDAS[reaching[np.argmin(cost[reaching])]]) if reaching.size else 0.0


__all__ = ["FORMAT", "PreRouterFile", "estimates", "export_router", "lambda_for_quality", "load", "save",
           "start_tiers"]
