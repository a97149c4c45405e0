"""RouterBench routers and metrics on a slice of the real tables, and the CLI study end to end."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipelines.datasets import load_routerbench
from pipelines.prerouters import (
    Features,
    KNNRouter,
    MLPRegressionRouter,
    OracleRouter,
    PreRouter,
    RandomRouter,
    RankingRouter,
    preference_weights,
    utility_sweep,
)
from pipelines.routing_metrics import aiq, model_shares, non_decreasing_hull, operating_points, qnc, rci
from tests.conftest import CASCADE

Split = tuple[Features, np.ndarray, np.ndarray, Features, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def mbpp(data_dir: Path) -> Split:
    from cascade.embeddings import MiniLMEmbedder

    train = load_routerbench([data_dir / "routerbench" / "mbpp_train.csv"])
    test = load_routerbench([data_dir / "routerbench" / "mbpp_test.csv"])
    embedder = MiniLMEmbedder()

    def features(prompts: tuple[str, ...]) -> Features:
        return Features(embedder.embed(prompts), np.array([len(p) for p in prompts], np.float64))

    assert train.costs is not None and test.costs is not None
    return features(train.prompts), train.scores, train.costs, features(test.prompts), test.scores, test.costs


def test_hull_is_concave_and_non_decreasing() -> None:
    costs = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    qualities = np.array([0.2, 0.3, 0.9, 0.8, 0.95])
    hull_cost, hull_quality = non_decreasing_hull(costs, qualities)
    assert hull_cost.tolist() == [1.0, 3.0, 5.0] and hull_quality.tolist() == [0.2, 0.9, 0.95]
    assert aiq(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.0, 1.0) == pytest.approx(0.5, abs=1e-3)
    assert aiq(np.array([0.0]), np.array([0.6]), 0.0, 2.0) == pytest.approx(0.6)


def test_qnc_and_rci_by_hand() -> None:
    assert qnc(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.8, 0.9]), 0.8, 4.0) == pytest.approx(0.5)
    assert qnc(np.array([1.0]), np.array([0.5]), 0.8, 4.0) is None
    scores = np.array([[1, 1], [0, 1], [1, 1]], float)
    costs = np.array([[1, 10], [1, 10], [1, 10]], float)
    assert rci(np.array([1, 1, 0]), scores, costs) == pytest.approx(1 / 3)
    assert model_shares(np.array([[0, 1, 1]]), 2).tolist() == [[1 / 3, 2 / 3]]


def test_preferences_rank_correct_first_then_cheaper() -> None:
    weights = preference_weights(np.array([[1.0, 1.0, 0.0]]), np.array([[5.0, 1.0, 0.5]]), tie_weight=0.5)
    assert weights[0, 0, 2] == 1.0 and weights[0, 2, 0] == 0.0
    assert weights[0, 1, 0] == 0.5 and weights[0, 0, 1] == 0.0


def test_utility_sweep_goes_from_cheapest_to_best() -> None:
    quality = np.array([[0.5, 0.9]])
    cost = np.array([[1.0, 10.0]])
    choices = utility_sweep(quality, cost, np.array([1.0, 0.01, 0.0]))
    assert choices[:, 0].tolist() == [0, 1, 1]


@pytest.mark.parametrize("make", [lambda s, c: RandomRouter(), lambda s, c: KNNRouter(k=10),
                                  lambda s, c: MLPRegressionRouter(), lambda s, c: RankingRouter(epochs=150),
                                  lambda s, c: OracleRouter(s, c)])
def test_each_router_sweeps_a_cost_quality_curve(mbpp: Split, make: Callable[..., PreRouter]) -> None:
    train_x, train_s, train_c, test_x, test_s, test_c = mbpp
    router = make(test_s, test_c)
    router.fit(train_x, train_s, train_c)
    choices = router.sweep(test_x)
    assert choices.shape[1] == len(test_s) and choices.min() >= 0 and choices.max() < test_s.shape[1]
    costs, qualities = operating_points(choices, test_s, test_c)
    assert costs[-1] > costs[0], "the loosest budget spends more than the tightest"
    cheapest_model_quality = test_s[:, test_c.mean(axis=0).argmin()].mean()
    assert qualities.max() >= cheapest_model_quality


def test_learned_routers_beat_random_and_oracle_beats_all(mbpp: Split) -> None:
    train_x, train_s, train_c, test_x, test_s, test_c = mbpp
    low, high = test_c.mean(axis=0).min(), test_c.mean(axis=0).max()
    area = {}
    for router in (RandomRouter(), KNNRouter(k=10), OracleRouter(test_s, test_c)):
        router.fit(train_x, train_s, train_c)
        area[router.name] = aiq(*operating_points(router.sweep(test_x), test_s, test_c), low, high)
    assert area["oracle"] > area["knn"] > area["random"]


def test_routerbench_cli_writes_the_summary(data_dir: Path, tmp_path: Path) -> None:
    bench = data_dir / "routerbench"
    result = subprocess.run([CASCADE, "routerbench", "--train", str(bench / "mbpp_train.csv"),
                             "--test", str(bench / "mbpp_test.csv"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["routers"]) == {"random", "knn", "mlp_regression", "ranking", "oracle"}
    for figures in summary["routers"].values():
        assert set(figures) == {"aiq", "qnc", "rci", "peak_quality"}
        assert 0 <= figures["aiq"] <= 1 and 0 <= figures["rci"] <= 1
    assert summary["best_single_model"]["name"] in summary["data"]["models"]
    assert summary["routers"]["oracle"]["qnc"] < 1
    assert (tmp_path / "cost_quality.png").stat().st_size > 0 and (tmp_path / "model_shares.png").stat().st_size > 0
