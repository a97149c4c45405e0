"""Cost–quality metrics of a router's budget sweep: AIQ, QNC, RCI, and model shares."""

from __future__ import annotations

import numpy as np


def operating_points(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean cost and mean quality per query for each budget setting of a (settings, n) sweep."""
    rows = np.arange(choices.shape[1])
    return costs[rows, choices].mean(axis=1), scores[rows, choices].mean(axis=1)


def non_decreasing_hull(costs: np.ndarray, qualities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the upper convex hull of the points, cut where quality stops rising."""
    order = np.lexsort((-qualities, costs))
    hull: list[tuple[float, float]] = []
    for c, q in zip(costs[order].tolist(), qualities[order].tolist(), strict=True):
        if hull and q <= hull[-1][1]:
            continue
        while len(hull) >= 2:
            (c1, q1), (c2, q2) = hull[-2], hull[-1]
            if (q2 - q1) * (c - c1) <= (q - q1) * (c2 - c1):
                hull.pop()
            else:
                break
        hull.append((c, q))
    vertices = np.array(hull, np.float64).reshape(-1, 2)
    return vertices[:, 0], vertices[:, 1]


def aiq(costs: np.ndarray, qualities: np.ndarray, low: float, high: float) -> float:
    """Area under the non-decreasing convex hull over [low, high], divided by high - low.

    Below the router's cheapest operating point the hull is 0 (the router cannot run there);
    beyond its most expensive point it stays at its best quality.
    """
    hull_cost, hull_quality = non_decreasing_hull(costs, qualities)
    grid = np.linspace(low, high, 4001)
    curve = np.interp(grid, hull_cost, hull_quality, left=0.0, right=hull_quality[-1])
    return float(np.trapezoid(curve, grid) / (high - low))


def qnc(costs: np.ndarray, qualities: np.ndarray, target_quality: float, target_cost: float) -> float | None:
    """Lowest cost of an operating point reaching ``target_quality``, over ``target_cost``; None if none does."""
    reaching = costs[qualities >= target_quality - 1e-12]
    return float(reaching.min() / target_cost) if reaching.size else None


def rci(choice: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> float:
    """Routing-collapse index: the share of queries sent to their most expensive model while a
    cheaper model was also correct."""
    rows = np.arange(len(choice))
    priciest = costs.argmax(axis=1)
    cheaper_correct = ((costs < costs[rows, priciest][:, None]) & (scores > 0)).any(axis=1)
    return float(((choice == priciest) & cheaper_correct).mean())


def model_shares(choices: np.ndarray, models: int) -> np.ndarray:
    """(settings, models) share of queries each model receives at each budget setting."""
    counts = np.stack([np.bincount(row, minlength=models) for row in choices])
    return counts / choices.shape[1]
