"""Metrics of a budget sweep beyond ``routing_metrics``: EquiRouter's collapse index, quality at a
given cost, and how much of a QNC figure is test-set noise (bootstrap over test queries)."""

from __future__ import annotations

import numpy as np

from pipelines.routing_metrics import non_decreasing_hull


def rci_paper(choice: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> float:
    """EquiRouter's routing-collapse index: the share of queries whose pick is not among their best
    models, or is the most expensive model on average while a cheaper model is also best."""
    rows = np.arange(len(choice))
    mean_cost = costs.mean(axis=0)
    priciest = mean_cost == mean_cost.max()
    is_best = scores == scores.max(axis=1, keepdims=True)
    chosen_best = is_best[rows, choice]
    only_priciest_best = ~(is_best & ~priciest[None]).any(axis=1)
    fine = (chosen_best & ~priciest[choice]) | (chosen_best & only_priciest_best)
    return float((~fine).mean())


def quality_at_cost(costs: np.ndarray, qualities: np.ndarray, budget: float) -> float:
    """Quality of the non-decreasing hull of the operating points at a mean cost per query (0 below it)."""
    hull_cost, hull_quality = non_decreasing_hull(costs, qualities)
    return float(np.interp(budget, hull_cost, hull_quality, left=0.0))


def best_single(scores: np.ndarray, costs: np.ndarray) -> int:
    """Index of the model with the highest mean score; the cheaper one on a tie."""
    return int(np.lexsort((costs.mean(axis=0), -scores.mean(axis=0)))[0])


def bootstrap_qnc(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray, resamples: int = 500,
                  seed: int = 0) -> np.ndarray:
    """QNC of a (settings, n) sweep on ``resamples`` bootstrap resamples of the test queries (the
    target is each resample's own best single model); ``inf`` where the target is never reached."""
    n = choices.shape[1]
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    rows = np.arange(n)
    quality = counts @ scores[rows, choices].T / n  # (resamples, settings)
    cost = counts @ costs[rows, choices].T / n
    model_quality, model_cost = counts @ scores / n, counts @ costs / n  # (resamples, models)
    best = np.lexsort((model_cost, -model_quality), axis=1)[:, 0]
    target_quality = model_quality[np.arange(resamples), best]
    target_cost = model_cost[np.arange(resamples), best]
    reaching = np.where(quality >= target_quality[:, None] - 1e-12, cost, np.inf)
    return reaching.min(axis=1) / target_cost
