"""The exported pre-router: a file, scored with numpy alone, that gives each query its starting tier."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.prerouter_export import estimates, export_router, lambda_for_quality, load, save, start_tiers
from pipelines.prerouters import Features, RankingRouter, utility_sweep

Fitted = tuple[RankingRouter, Features, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hard = x[:, 0] > 0.1
    scores = np.column_stack([~hard, ~hard | (x[:, 1] > 0), np.ones(300, bool)]).astype(float)
    chars = rng.integers(50, 2000, 300).astype(float)
    costs = np.column_stack([1e-4 * np.ones(300), 1e-3 * np.ones(300), 1e-2 * np.ones(300)]) * (chars / 500)[:, None]
    features = Features(x, chars)
    router = RankingRouter(rank=4, weight_decays=(1e-3, 3e-3), steps=300)
    router.fit(features, scores, costs)
    return router, features, scores, costs


def test_exported_file_scores_like_the_router_and_round_trips(fitted: Fitted, tmp_path: Path) -> None:
    router, features, _, _ = fitted
    exported = export_router(router, ["small", "medium", "large"], lam=50.0, tiers=[0, 0, 1], shared_lines=["x"])
    path = tmp_path / "prerouter.json"
    save(exported, path)
    loaded = load(path)
    probability, cost = estimates(loaded, features.embeddings, features.prompt_chars)
    expected = router.predict(features)
    np.testing.assert_allclose(probability, expected.quality, rtol=1e-9)
    np.testing.assert_allclose(cost, expected.cost, rtol=1e-9)
    picks = utility_sweep(expected.quality, expected.cost, np.array([50.0]))[0]
    tiers = start_tiers(loaded, features.embeddings, features.prompt_chars)
    assert np.array_equal(tiers, np.array([0, 0, 1])[picks]) and set(tiers.tolist()) <= {0, 1}
    assert loaded.shared_lines == ("x",) and loaded.models == ("small", "medium", "large")


def test_start_tiers_follows_the_price_of_quality(fitted: Fitted) -> None:
    router, features, scores, _ = fitted
    cheap = start_tiers(export_router(router, ["s", "m", "l"], lam=1e7), features.embeddings)
    careless = start_tiers(export_router(router, ["s", "m", "l"], lam=0.0), features.embeddings)
    assert np.all(cheap == 0), "an extreme price of cost starts every query at the cheapest tier"
    assert scores[np.arange(len(careless)), careless].mean() > 0.95, "with cost free, picks are (nearly) all right"
    middle = start_tiers(export_router(router, ["s", "m", "l"], lam=30.0), features.embeddings, features.prompt_chars)
    hard = features.embeddings[:, 0] > 0.1
    assert np.mean(middle[hard] > 0) > np.mean(middle[~hard] > 0), "hard queries skip the small tier more often"


def test_lambda_for_quality_reaches_the_target_on_its_data(fitted: Fitted) -> None:
    router, features, scores, costs = fitted
    lam = lambda_for_quality(router, features, scores, costs, target_quality=0.95)
    picks = utility_sweep(router.predict(features).quality, router.cost_model.predict(features), np.array([lam]))[0]
    assert scores[np.arange(len(picks)), picks].mean() >= 0.95
    assert lambda_for_quality(router, features, scores, costs, target_quality=1.5) == 0.0


def test_bad_files_and_shapes_are_refused(fitted: Fitted, tmp_path: Path) -> None:
    router = fitted[0]
    path = tmp_path / "bad.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a cascade-prerouter"):
        load(path)
    exported = export_router(router, ["s", "m", "l"], lam=1.0)
    with pytest.raises(ValueError, match="embeddings must be"):
        start_tiers(exported, np.zeros((2, 5)))
    with pytest.raises(ValueError):
        export_router(router, ["s", "m"], lam=1.0)


def test_scoring_imports_no_torch(tmp_path: Path, fitted: Fitted) -> None:
    router, features, _, _ = fitted
    path, vectors = tmp_path / "prerouter.json", tmp_path / "x.npy"
    save(export_router(router, ["s", "m", "l"], lam=30.0), path)
    np.save(vectors, features.embeddings)
    code = ("import sys, pathlib, numpy as np\n"
            "from pipelines.prerouter_export import load, start_tiers\n"
            f"tiers = start_tiers(load(pathlib.Path({str(path)!r})), np.load({str(vectors)!r}))\n"
            "assert 'torch' not in sys.modules, 'scoring pulled in torch'\n"
            "print(len(tiers))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(features.embeddings))
