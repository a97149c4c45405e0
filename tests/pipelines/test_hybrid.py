"""Pre-routing against the cascade on the same questions (pure arithmetic, no models)."""

from __future__ import annotations

import numpy as np

from pipelines.hybrid import routing_costs


def questions(n: int = 400, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    small = (rng.random(n) < 0.5).astype(float)
    large = np.maximum(small, (rng.random(n) < 0.6).astype(float))  # large right wherever small is, and more
    return small, large, np.full(n, 0.1), np.full(n, 1.0)


def test_a_pre_router_that_knows_the_hard_questions_makes_the_hybrid_cheaper_than_the_cascade() -> None:
    small, large, small_cost, large_cost = questions()
    weights = np.ones((1, len(small)))
    blind = np.random.default_rng(1).random(len(small))
    hard = (large - small) + 0.01 * blind  # where escalating helps
    knowing = routing_costs(hard, blind, small, large, small_cost, large_cost, weights, 0.97)
    assert knowing["hybrid"]["cost"][0] < knowing["cascade only"]["cost"][0]
    assert knowing["hybrid"]["small_skipped"][0] > 0
    assert knowing["hybrid"]["cost"][0] <= knowing["pre-router only"]["cost"][0]


def test_a_blind_pre_router_skips_nothing_and_the_cascade_alone_is_the_best_it_can_do() -> None:
    small, large, small_cost, large_cost = questions(seed=2)
    weights = np.ones((1, len(small)))
    confident = -(large - small) + 0.01 * np.random.default_rng(3).random(len(small))  # a sharp deferral score
    blind = np.random.default_rng(4).random(len(small))
    modes = routing_costs(blind, -confident, small, large, small_cost, large_cost, weights, 0.97)
    cascade = modes["cascade only"]["cost"][0]
    assert modes["hybrid"]["cost"][0] == cascade and modes["hybrid"]["small_skipped"][0] == 0
    assert modes["pre-router only"]["cost"][0] > cascade
    # at 100% of large-only quality the cascade escalates exactly where large helps: every small call plus those
    exact = routing_costs(blind, -confident, small, large, small_cost, large_cost, weights, 1.0)["cascade only"]
    assert exact["cost"][0] == (0.1 * len(small) + (large - small).sum()) / len(small) > cascade
