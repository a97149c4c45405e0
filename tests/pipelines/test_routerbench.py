"""RouterBench routers, decision rules and metrics on a slice of the real tables, and the CLI study."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.equirouter import EquiRouter, PerformanceNet, pairwise_rank_loss
from pipelines.prerouters import (
    Features,
    KNNRouter,
    MLPRegressionRouter,
    OracleRouter,
    PerTaskRouter,
    PreRouter,
    RandomRouter,
    RankingRouter,
    SingleModelRouter,
    budget_grid,
    budget_sweep,
    preference_weights,
    utility_sweep,
)
from pipelines.routing_metrics import aiq, model_shares, non_decreasing_hull, operating_points, qnc, rci
from pipelines.sweep_metrics import bootstrap_qnc, quality_at_cost, rci_paper
from tests.conftest import CASCADE

Split = tuple[Features, np.ndarray, np.ndarray, Features, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def mbpp(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Split:
    from pipelines.routerbench import load_split

    bench = data_dir / "routerbench"
    split = load_split([bench / "mbpp_train.csv"], [bench / "mbpp_test.csv"],
                       cache_dir=tmp_path_factory.mktemp("embeddings"))
    train, test = split.train, split.test
    assert train.costs is not None and test.costs is not None
    return split.train_features, train.scores, train.costs, split.test_features, test.scores, test.costs


def test_hull_is_concave_and_non_decreasing() -> None:
    costs = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    qualities = np.array([0.2, 0.3, 0.9, 0.8, 0.95])
    hull_cost, hull_quality = non_decreasing_hull(costs, qualities)
    assert hull_cost.tolist() == [1.0, 3.0, 5.0] and hull_quality.tolist() == [0.2, 0.9, 0.95]
    assert aiq(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.0, 1.0) == pytest.approx(0.5, abs=1e-3)
    assert quality_at_cost(costs, qualities, 2.0) == pytest.approx(0.55)
    assert quality_at_cost(costs, qualities, 0.5) == 0.0


def test_qnc_and_both_rcis_by_hand() -> None:
    assert qnc(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.8, 0.9]), 0.8, 4.0) == pytest.approx(0.5)
    assert qnc(np.array([1.0]), np.array([0.5]), 0.8, 4.0) is None
    scores = np.array([[1, 1], [0, 1], [1, 1], [1, 0], [0, 0]], float)
    costs = np.tile([1.0, 10.0], (5, 1))
    choice = np.array([1, 1, 0, 1, 1])
    # ours: priciest while the cheap model was right: queries 0 and 3
    assert rci(choice, scores, costs) == pytest.approx(2 / 5)
    # paper: 0 collapsed (priciest though the cheap one is also best), 1 fine (only the priciest is best),
    # 2 fine (cheap and best), 3 collapsed (not among the best), 4 collapsed (both tie; priciest picked)
    assert rci_paper(choice, scores, costs) == pytest.approx(3 / 5)
    assert model_shares(np.array([[0, 1, 1]]), 2).tolist() == [[1 / 3, 2 / 3]]


def test_bootstrap_qnc_of_the_best_single_model_is_one() -> None:
    rng = np.random.default_rng(1)
    scores = (rng.random((200, 3)) < [0.5, 0.7, 0.9]).astype(float)
    costs = np.tile([1.0, 2.0, 8.0], (200, 1))
    always_best = np.full((1, 200), 2)
    values = bootstrap_qnc(always_best, scores, costs, resamples=50)
    assert values.shape == (50,) and np.all((values == 1.0) | ~np.isfinite(values))
    assert np.isfinite(values).mean() > 0.8  # model 2 is the best single model in most resamples
    oracle = utility_sweep(scores, costs, np.array([1.0, 0.0]))
    assert np.all(bootstrap_qnc(oracle, scores, costs, resamples=50) < 1.0)


def test_preferences_rank_correct_first_then_cheaper() -> None:
    weights = preference_weights(np.array([[1.0, 1.0, 0.0]]), np.array([[5.0, 1.0, 0.5]]), tie_weight=0.5)
    assert weights[0, 0, 2] == 1.0 and weights[0, 2, 0] == 0.0
    assert weights[0, 1, 0] == 0.5 and weights[0, 0, 1] == 0.0
    assert preference_weights(np.array([[1.0, 1.0]]), np.array([[5.0, 1.0]]))[0].sum() == 0.0


def test_utility_sweep_goes_from_cheapest_to_best_and_breaks_ties_by_cost() -> None:
    choices = utility_sweep(np.array([[0.5, 0.9]]), np.array([[1.0, 10.0]]), np.array([1.0, 0.01, 0.0]))
    assert choices[:, 0].tolist() == [0, 1, 1]
    assert utility_sweep(np.array([[1.0, 1.0]]), np.array([[3.0, 2.0]]), np.array([0.0]))[0, 0] == 1


def test_budget_mask_takes_the_best_score_under_each_budget() -> None:
    quality = np.array([[0.2, 0.9, 0.5], [0.7, 0.7, 0.1]])
    cost = np.array([[1.0, 5.0, 2.0], [3.0, 2.0, 1.0]])
    choices = budget_sweep(quality, cost, np.array([0.5, 2.0, 5.0]))
    # budget 0.5: nothing allowed -> cheapest; 2.0: {0, 2} and {1, 2}; 5.0: all (tie 0.7 -> cheaper model 1)
    assert choices.tolist() == [[0, 2], [2, 1], [1, 1]]
    assert budget_grid(np.array([[1.0, 2.0], [2.0, 3.0]])).tolist() == [1.0, 2.0, 3.0]
    assert len(budget_grid(np.arange(1000.0).reshape(100, 10))) == 100


def test_pairwise_rank_loss_counts_only_strictly_ordered_pairs() -> None:
    scores = torch.tensor([[2.0, 0.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])  # pairs (0 > 1) and (2 > 1); (0, 2) is a tie and dropped
    expected = (torch.nn.functional.softplus(torch.tensor(-2.0)) + torch.nn.functional.softplus(torch.tensor(-1.0))) / 2
    assert pairwise_rank_loss(scores, labels).item() == pytest.approx(expected.item())
    assert pairwise_rank_loss(scores, torch.ones(1, 3)).item() == 0.0


def test_equirouter_network_has_the_published_shape() -> None:
    net = PerformanceNet(384, 11)
    linear = [m for m in net.trunk if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(384, 1024), (1024, 512), (512, 512)]
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in net.trunk) == 3
    assert sum(isinstance(m, torch.nn.GELU) for m in net.trunk) == 3
    assert net.identities.shape == (11, 128) and net.film.out_features == 1024
    assert net.head[0].in_features == 4 * 512
    assert net(torch.zeros(5, 384)).shape == (5, 11)


def test_ranking_router_learns_which_model_a_query_needs() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hard = x[:, 0] > 0
    scores = np.column_stack([~hard, np.ones(400, bool)]).astype(float)  # the cheap model fails hard queries
    costs = np.tile([1.0, 10.0], (400, 1))
    features = Features(x, np.full(400, 100.0))
    router = RankingRouter(rank=4, weight_decays=(1e-3,), steps=300)
    router.fit(features.subset(np.arange(300)), scores[:300], costs[:300])
    probability = router.predict(features.subset(np.arange(300, 400))).quality
    picks = utility_sweep(probability, np.tile([1.0, 10.0], (100, 1)), np.array([0.02]))[0]
    assert np.mean(picks == hard[300:].astype(int)) > 0.9


def test_per_task_router_uses_each_task_mean() -> None:
    features = Features(np.zeros((4, 2)), np.ones(4), ("a", "a", "b", "b"))
    router = PerTaskRouter()
    router.fit(features, np.array([[1, 0], [1, 0], [0, 1], [0, 1]], float), np.ones((4, 2)))
    estimates = router.predict(Features(np.zeros((3, 2)), np.ones(3), ("b", "a", "unseen")))
    assert estimates.quality.tolist() == [[0, 1], [1, 0], [0.5, 0.5]]


ROUTERS: list[Callable[[np.ndarray, np.ndarray], PreRouter]] = [
    lambda s, c: SingleModelRouter(), lambda s, c: PerTaskRouter(), lambda s, c: RandomRouter(),
    lambda s, c: KNNRouter(k=10), lambda s, c: MLPRegressionRouter(), lambda s, c: RankingRouter(weight_decays=(3e-3,)),
    lambda s, c: EquiRouter(), lambda s, c: OracleRouter(s, c),
]


@pytest.mark.parametrize("make", ROUTERS)
def test_each_router_sweeps_a_cost_quality_curve_under_both_rules(
    mbpp: Split, make: Callable[[np.ndarray, np.ndarray], PreRouter],
) -> None:
    train_x, train_s, train_c, test_x, test_s, test_c = mbpp
    router = make(test_s, test_c)
    router.fit(train_x, train_s, train_c)
    estimates = router.predict(test_x)
    assert estimates.quality.shape == estimates.cost.shape == test_s.shape
    for choices in (utility_sweep(estimates.quality, estimates.cost), budget_sweep(estimates.quality, estimates.cost)):
        assert choices.shape[1] == len(test_s) and choices.min() >= 0 and choices.max() < test_s.shape[1]
        costs, qualities = operating_points(choices, test_s, test_c)
        assert costs[-1] > costs[0], "the loosest budget spends more than the tightest"
        assert qualities.max() >= test_s[:, test_c.mean(axis=0).argmin()].mean()


def test_learned_routers_beat_random_and_oracle_beats_all(mbpp: Split) -> None:
    train_x, train_s, train_c, test_x, test_s, test_c = mbpp
    low, high = test_c.mean(axis=0).min(), test_c.mean(axis=0).max()
    area = {}
    for router in (RandomRouter(), KNNRouter(k=10), RankingRouter(weight_decays=(3e-3,)), OracleRouter(test_s, test_c)):
        router.fit(train_x, train_s, train_c)
        estimates = router.predict(test_x)
        area[router.name] = aiq(*operating_points(utility_sweep(estimates.quality, estimates.cost), test_s, test_c),
                                low, high)
    assert area["oracle"] > area["ranking"] > area["random"]
    assert area["oracle"] > area["knn"] > area["random"]


@pytest.mark.integration
def test_routerbench_cli_writes_the_summary(data_dir: Path, tmp_path: Path) -> None:
    bench = data_dir / "routerbench"
    result = subprocess.run([CASCADE, "routerbench", "--train", str(bench / "mbpp_train.csv"),
                             "--test", str(bench / "mbpp_test.csv"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = {"single_model", "per_task", "random", "knn", "mlp_regression", "ranking", "ranking_pointwise",
             "ranking_decision_aware", "equirouter", "oracle"}
    assert set(summary["routers"]) == names
    for rule in ("lambda", "budget"):
        assert set(summary["rules"][rule]) == names
        for figures in summary["rules"][rule].values():
            assert len(figures["aiq"]["per_seed"]) == 5
            assert 0 <= figures["aiq"]["mean"] <= 1 and 0 <= figures["rci_paper"]["mean"] <= 1
        assert summary["rules"][rule]["oracle"]["qnc"]["mean"] < 1
    assert summary["best_single_model"]["name"] in summary["data"]["models"]
    assert summary["protocol"]["prompts"] == "tail"
    for name in ("cost_quality.png", "model_shares_lambda.png", "model_shares_budget.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "### Target" in (tmp_path / "summary.md").read_text()
