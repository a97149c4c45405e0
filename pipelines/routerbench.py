"""The RouterBench study: pre-generation routers over MiniLM embeddings, swept over the budget.

Trains on the train tables, tests on the test tables, and writes ``summary.json``, ``summary.md``,
``cost_quality.png`` and ``model_shares.png`` (where routing collapse shows: the share of the most
expensive model as the budget grows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from cascade.embeddings import MiniLMEmbedder
from pipelines.datasets import OutcomeTable, load_routerbench
from pipelines.prerouters import (
    Features,
    KNNRouter,
    MLPRegressionRouter,
    OracleRouter,
    PreRouter,
    RandomRouter,
    RankingRouter,
)
from pipelines.routing_metrics import aiq, model_shares, non_decreasing_hull, operating_points, qnc, rci


@dataclass(frozen=True)
class RouterResult:
    """One router's sweep on the test set."""

    name: str
    costs: np.ndarray  # (settings,) mean dollars per query
    qualities: np.ndarray  # (settings,)
    shares: np.ndarray  # (settings, models)
    aiq: float
    qnc: float | None
    rci: float

    @property
    def peak_quality(self) -> float:
        return float(self.qualities.max())


def _features(table: OutcomeTable, embedder: MiniLMEmbedder) -> Features:
    return Features(embedder.embed(table.prompts), np.array([len(p) for p in table.prompts], np.float64))


def _aligned(test: OutcomeTable, models: Sequence[str]) -> OutcomeTable:
    order = [test.models.index(m) for m in models]
    assert test.costs is not None
    return OutcomeTable(test.prompts, tuple(models), test.scores[:, order], test.costs[:, order], test.groups,
                        test.dropped)


def best_single_model(table: OutcomeTable) -> tuple[str, float, float]:
    """Name, mean quality and mean cost of the highest-quality model (the cheaper one on a tie)."""
    assert table.costs is not None
    quality, cost = table.scores.mean(axis=0), table.costs.mean(axis=0)
    best = int(np.lexsort((cost, -quality))[0])
    return table.models[best], float(quality[best]), float(cost[best])


def run_study(
    train_paths: Sequence[Path], test_paths: Sequence[Path], seed: int = 0,
) -> tuple[dict[str, object], list[RouterResult], OutcomeTable]:
    """Fit every router on the train tables and sweep it on the test tables."""
    train = load_routerbench(train_paths)
    test = _aligned(load_routerbench(test_paths), train.models)
    assert train.costs is not None and test.costs is not None
    embedder = MiniLMEmbedder()
    train_features, test_features = _features(train, embedder), _features(test, embedder)
    name, best_quality, best_cost = best_single_model(test)
    single_costs = test.costs.mean(axis=0)
    low, high = float(single_costs.min()), float(single_costs.max())

    routers: list[PreRouter] = [RandomRouter(seed), KNNRouter(), MLPRegressionRouter(seed), RankingRouter(seed),
                                OracleRouter(test.scores, test.costs)]
    results = []
    for router in routers:
        router.fit(train_features, train.scores, train.costs)
        choices = router.sweep(test_features)
        costs, qualities = operating_points(choices, test.scores, test.costs)
        results.append(RouterResult(
            name=router.name, costs=costs, qualities=qualities, shares=model_shares(choices, len(test.models)),
            aiq=aiq(costs, qualities, low, high), qnc=qnc(costs, qualities, best_quality, best_cost),
            rci=rci(choices[-1], test.scores, test.costs),
        ))
    summary: dict[str, object] = {
        "routers": {r.name: {"aiq": r.aiq, "qnc": r.qnc, "rci": r.rci, "peak_quality": r.peak_quality}
                    for r in results},
        "best_single_model": {"name": name, "quality": best_quality, "cost": best_cost},
        "data": {"train_prompts": len(train), "test_prompts": len(test),
                 "dropped_incomplete": {"train": train.dropped, "test": test.dropped},
                 "models": list(test.models)},
    }
    return summary, results, test


def markdown(summary: dict[str, object], results: Sequence[RouterResult]) -> str:
    """The summary as a markdown table."""
    best = summary["best_single_model"]
    assert isinstance(best, dict)
    lines = [
        f"Best single model on the test set: **{best['name']}**, quality {best['quality']:.3f} at "
        f"${best['cost'] * 1000:.3f} per 1,000 queries.",
        "",
        "| router | AIQ | QNC | RCI | peak quality | cost at peak ($/1k queries) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        at_peak = r.costs[int(np.argmax(r.qualities))] * 1000
        qnc_text = f"{r.qnc:.3f}" if r.qnc is not None else "never reached"
        lines.append(f"| {r.name} | {r.aiq:.4f} | {qnc_text} | {r.rci:.3f} | {r.peak_quality:.3f} | {at_peak:.3f} |")
    lines += ["", "AIQ: area under the non-decreasing convex hull of (cost, quality) over the single models' cost "
              "range, divided by that range. QNC: lowest cost reaching the best single model's quality, over that "
              "model's cost. RCI: at the loosest budget, the share of queries sent to the most expensive model "
              "while a cheaper model was also correct."]
    return "\n".join(lines) + "\n"


def plot(results: Sequence[RouterResult], test: OutcomeTable, out_dir: Path) -> None:
    """cost_quality.png and model_shares.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert test.costs is not None
    figure, axes = plt.subplots(figsize=(8, 5.5))
    for r in results:
        hull_cost, hull_quality = non_decreasing_hull(r.costs, r.qualities)
        line = axes.plot(hull_cost * 1000, hull_quality, label=f"{r.name} (AIQ {r.aiq:.3f})")[0]
        axes.scatter(r.costs * 1000, r.qualities, s=8, color=line.get_color(), alpha=0.5)
    single_cost, single_quality = test.costs.mean(axis=0) * 1000, test.scores.mean(axis=0)
    axes.scatter(single_cost, single_quality, marker="x", color="black", label="single models")
    for model, cost, quality in zip(test.models, single_cost, single_quality, strict=True):
        axes.annotate(model.split("/")[-1], (cost, quality), fontsize=6, xytext=(3, -3), textcoords="offset points")
    axes.set_xlabel("cost, $ per 1,000 queries")
    axes.set_ylabel("quality (share correct)")
    axes.set_title("RouterBench (ARC-Challenge + MBPP test): cost against quality")
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(out_dir / "cost_quality.png", dpi=120)
    plt.close(figure)

    priciest = int(np.argmax(test.costs.mean(axis=0)))
    figure, grid = plt.subplots(1, len(results), figsize=(4 * len(results), 3.8), sharey=True)
    for axes, r in zip(np.atleast_1d(grid), results, strict=True):
        order = np.argsort(r.costs, kind="stable")
        axes.stackplot(r.costs[order] * 1000, r.shares[order].T, labels=[m.split("/")[-1] for m in test.models])
        axes.plot(r.costs[order] * 1000, r.shares[order, priciest], color="black", linewidth=1.5,
                  label=f"{test.models[priciest].split('/')[-1]} (priciest)")
        axes.set_title(f"{r.name}: RCI {r.rci:.2f}")
        axes.set_xlabel("cost, $ per 1,000 queries")
    np.atleast_1d(grid)[0].set_ylabel("share of calls")
    np.atleast_1d(grid)[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    figure.savefig(out_dir / "model_shares.png", dpi=110)
    plt.close(figure)


def write_report(
    train_paths: Sequence[Path], test_paths: Sequence[Path], out_dir: Path, seed: int = 0,
) -> dict[str, object]:
    """Run the study and write summary.json, summary.md and the plots to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, results, test = run_study(train_paths, test_paths, seed)
    (out_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out_dir / "summary.md").write_text(markdown(summary, results))
    plot(results, test, out_dir)
    return summary
