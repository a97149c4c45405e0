"""Pre-routing, cascading and both, on the same QA records: what each costs at a quality target.

Three ways to spend the large model on a set of questions, each swept over its own knob:

- cascade only: every question goes to the small model; the deferral score escalates the least
  confident share of answers (cost: every small call, plus the large calls of escalated answers);
- pre-router only: the pre-router's score sends a share of questions straight to the large model,
  the rest are answered by the small one with no check after generation;
- hybrid: the pre-router sends a share straight to the large model (saving those small calls and
  their latency), and the cascade runs on the rest.

For each, the cheapest setting whose routed quality reaches ``level`` × large-only quality, its cost
as a share of large-only cost, and the share of small-model calls it skips; per bootstrap resample
(rows of ``weights``), so every figure gets an interval.
"""

from __future__ import annotations

import numpy as np

PRE_SHARES = np.linspace(0.0, 1.0, 21)  # shares of questions the pre-router may send straight to large


def _cheapest(quality: np.ndarray, cost: np.ndarray, skipped: np.ndarray, needed: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the lowest cost among settings (columns) whose quality reaches ``needed`` and the
    skipped share there (inf and NaN where none does)."""
    meets = quality >= needed[:, None] - 1e-12
    masked = np.where(meets, cost, np.inf)
    best = np.argmin(masked, axis=1)
    rows = np.arange(len(cost))
    found = np.isfinite(masked[rows, best])
    return np.where(found, masked[rows, best], np.inf), np.where(found, skipped[rows, best], np.nan)


def routing_costs(pre_score: np.ndarray, defer_score: np.ndarray, small: np.ndarray, large: np.ndarray,
                  small_cost: np.ndarray, large_cost: np.ndarray, weights: np.ndarray, level: float
                  ) -> dict[str, dict[str, np.ndarray]]:
    """{mode: {"cost": (B,) cost at the target / large-only cost, "small_skipped": (B,)}} (see the module
    docstring); ``weights`` is (B, n), one bootstrap resample of the questions per row."""
    n = len(small)
    total = weights.sum(axis=1)
    needed = level * (weights * large).sum(axis=1) / total
    large_only = (weights * large_cost).sum(axis=1)
    by_pre = np.argsort(-pre_score, kind="stable")
    qualities, costs, skipped, is_cascade, is_pre_only = [], [], [], [], []
    for share in PRE_SHARES:
        pre = np.zeros(n, bool)
        pre[by_pre[:round(share * n)]] = True
        rest = np.flatnonzero(~pre)
        order = rest[np.argsort(-defer_score[rest], kind="stable")]  # escalate the least confident first
        w_rest = weights[:, order]
        base_quality = (weights[:, pre] * large[pre]).sum(axis=1) + (w_rest * small[order]).sum(axis=1)
        base_cost = (weights[:, pre] * large_cost[pre]).sum(axis=1) + (w_rest * small_cost[order]).sum(axis=1)
        gain = np.concatenate([np.zeros((len(weights), 1)),
                               np.cumsum(w_rest * (large[order] - small[order]), axis=1)], axis=1)
        extra = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(w_rest * large_cost[order], axis=1)], axis=1)
        qualities.append((base_quality[:, None] + gain) / total[:, None])
        costs.append((base_cost[:, None] + extra) / large_only[:, None])
        skipped.append(np.full(gain.shape, (weights[:, pre].sum(axis=1) / total)[:, None]))
        is_cascade.append(np.full(gain.shape[1], share == 0.0))
        is_pre_only.append(np.arange(gain.shape[1]) == 0)
    quality, cost, skip = (np.concatenate(parts, axis=1) for parts in (qualities, costs, skipped))
    cascade, pre_only = np.concatenate(is_cascade), np.concatenate(is_pre_only)
    result = {}
    for mode, columns in (("cascade only", cascade), ("pre-router only", pre_only),
                          ("hybrid", np.ones_like(cascade))):
        best_cost, best_skip = _cheapest(quality[:, columns], cost[:, columns], skip[:, columns], needed)
        result[mode] = {"cost": best_cost, "small_skipped": best_skip}
    return result
