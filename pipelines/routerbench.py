"""The RouterBench study: pre-generation routers over MiniLM embeddings, swept over the budget.

Protocol: prompts are embedded without the lines they share with many training prompts (few-shot
blocks, fixed instructions; ``prompt_prefix.SharedLines``), embeddings are cached on disk; every
router's estimates go through both decision rules (score − λ·cost over a λ grid, and EquiRouter's
budget mask); learned routers run over several seeds. Writes ``summary.json``, ``summary.md``,
``cost_quality.png`` and ``model_shares_{lambda,budget}.png`` (where routing collapse shows: the
share of the most expensive model as the budget grows).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import orjson

from pipelines.datasets import DatasetError, OutcomeTable, load_routerbench
from pipelines.embedding_cache import CachedEmbedder
from pipelines.equirouter import EquiRouter
from pipelines.prerouters import (
    Estimates,
    Features,
    KNNRouter,
    MLPRegressionRouter,
    OracleRouter,
    PerTaskRouter,
    PreRouter,
    RandomRouter,
    RankingRouter,
    SingleModelRouter,
    budget_sweep,
    utility_sweep,
)
from pipelines.prompt_prefix import SharedLines, mean_pairwise_cosine_distance, unwrap
from pipelines.routing_metrics import aiq, model_shares, non_decreasing_hull, operating_points, qnc, rci
from pipelines.sweep_metrics import best_single, bootstrap_qnc, quality_at_cost, rci_paper

PromptView = Literal["tail", "whole"]
RULES = ("lambda", "budget")
BASELINES = ("single_model", "per_task", "random", "knn", "mlp_regression")
TARGET_RATIO = 0.83
METRICS = ("aiq", "qnc", "peak_quality", "cost_at_peak", "quality_at_half_cost", "rci", "rci_paper",
           "rci_at_target", "rci_paper_at_target", "priciest_share_at_target")


@dataclass(frozen=True)
class Split:
    """Train and test outcomes with the features every router sees."""

    train: OutcomeTable
    test: OutcomeTable
    train_features: Features
    test_features: Features
    shared_line_set: frozenset[str]  # lines stripped as shared (none for whole prompts)
    spread: dict[str, dict[str, float]]  # per task: mean pairwise cosine distance of test embeddings


@dataclass(frozen=True)
class Sweep:
    """One router's sweep under one decision rule and seed, on the test set."""

    router: str
    rule: str
    seed: int
    choices: np.ndarray  # (settings, n)
    costs: np.ndarray  # (settings,) mean dollars per query
    qualities: np.ndarray  # (settings,)
    metrics: dict[str, float | None]


def _aligned(test: OutcomeTable, models: Sequence[str]) -> OutcomeTable:
    """The test table's columns in the train table's model order; a model missing is a DatasetError."""
    missing = sorted(set(models) - set(test.models))
    if missing:
        raise DatasetError(f"the test files have no columns for the train files' models {missing}")
    order = [test.models.index(m) for m in models]
    assert test.costs is not None
    return OutcomeTable(test.prompts, tuple(models), test.scores[:, order], test.costs[:, order], test.groups,
                        test.dropped)


def best_single_model(table: OutcomeTable) -> tuple[str, float, float]:
    """Name, mean quality and mean cost of the highest-quality model (the cheaper one on a tie)."""
    assert table.costs is not None
    best = best_single(table.scores, table.costs)
    return table.models[best], float(table.scores[:, best].mean()), float(table.costs[:, best].mean())


def load_split(train_paths: Sequence[Path], test_paths: Sequence[Path], prompts: PromptView = "tail",
               cache_dir: Path | None = None) -> Split:
    """Load the tables and embed the prompts (tails by default), through the on-disk cache."""
    from cascade.embeddings import MiniLMEmbedder

    train = load_routerbench(train_paths)
    test = _aligned(load_routerbench(test_paths), train.models)
    train_text, test_text = [unwrap(p) for p in train.prompts], [unwrap(p) for p in test.prompts]
    shared = SharedLines.fit(train_text) if prompts == "tail" else SharedLines(frozenset())
    embedder = CachedEmbedder(MiniLMEmbedder(), folder=cache_dir)
    train_x, test_x = embedder.embed(shared.strip(train_text)), embedder.embed(shared.strip(test_text))
    groups = np.asarray(test.groups, dtype=object)
    spread = {g: {"pairwise_cosine_distance": mean_pairwise_cosine_distance(test_x[groups == g])}
              for g in sorted(set(test.groups))}
    return Split(
        train, test,
        Features(train_x, np.array([len(p) for p in train_text], np.float64), train.groups),
        Features(test_x, np.array([len(p) for p in test_text], np.float64), test.groups),
        shared.lines, spread,
    )


def make_routers(seed: int, test: OutcomeTable) -> list[PreRouter]:
    """Every router of the study, seeded; the oracle reads the test outcomes."""
    assert test.costs is not None
    return [SingleModelRouter(), PerTaskRouter(), RandomRouter(seed), KNNRouter(), MLPRegressionRouter(seed),
            RankingRouter(seed), RankingRouter(seed, rank_weight=0.0, name="ranking_pointwise"),
            RankingRouter(seed, tie_weight=0.1, name="ranking_decision_aware"), EquiRouter(seed),
            OracleRouter(test.scores, test.costs)]


def sweep_metrics(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> dict[str, float | None]:
    """AIQ, QNC, peak quality and its cost, quality at half the best model's cost, both RCIs at the
    loosest budget and at the cheapest setting that reaches the best single model's quality."""
    mean_cost = costs.mean(axis=0)
    best = best_single(scores, costs)
    target_quality, target_cost = float(scores[:, best].mean()), float(costs[:, best].mean())
    sweep_cost, sweep_quality = operating_points(choices, scores, costs)
    peak = int(np.lexsort((sweep_cost, -sweep_quality))[0])
    reaching = np.flatnonzero(sweep_quality >= target_quality - 1e-12)
    at_target = int(reaching[np.argmin(sweep_cost[reaching])]) if reaching.size else None
    priciest = int(np.argmax(mean_cost))
    return {
        "aiq": aiq(sweep_cost, sweep_quality, float(mean_cost.min()), float(mean_cost.max())),
        "qnc": qnc(sweep_cost, sweep_quality, target_quality, target_cost),
        "peak_quality": float(sweep_quality[peak]),
        "cost_at_peak": float(sweep_cost[peak]),
        "quality_at_half_cost": quality_at_cost(sweep_cost, sweep_quality, 0.5 * target_cost),
        "rci": rci(choices[-1], scores, costs),
        "rci_paper": rci_paper(choices[-1], scores, costs),
        "rci_at_target": None if at_target is None else rci(choices[at_target], scores, costs),
        "rci_paper_at_target": None if at_target is None else rci_paper(choices[at_target], scores, costs),
        "priciest_share_at_target": None if at_target is None else float((choices[at_target] == priciest).mean()),
    }


def decide(estimates: Estimates, rule: str) -> np.ndarray:
    """(settings, n) picks of one decision rule, tightest budget first."""
    if rule == "lambda":
        return utility_sweep(estimates.quality, estimates.cost)
    if rule == "budget":
        return budget_sweep(estimates.quality, estimates.cost)
    raise ValueError(f"unknown decision rule {rule!r}; choose one of {RULES}")


def _stats(values: Sequence[float | None]) -> dict[str, object]:
    reached = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(reached)) if len(reached) == len(values) else None,
        "sd": float(np.std(reached, ddof=1)) if len(reached) == len(values) and len(values) > 1 else 0.0,
        "per_seed": list(values),
        "reached": len(reached),
    }


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.mean() < 1 else None


def headroom(test: OutcomeTable, ranking: Estimates | None) -> dict[str, object]:
    """Per task: best single model, oracle, how often a cheap model suffices, and how predictable each
    model's correctness is from the embedding (AUROC of the ranking router's probabilities)."""
    assert test.costs is not None
    groups = np.asarray(test.groups, dtype=object)
    report: dict[str, object] = {}
    for group in sorted(set(test.groups)):
        rows = groups == group
        scores, costs = test.scores[rows], test.costs[rows]
        best, priciest = best_single(scores, costs), int(np.argmax(costs.mean(axis=0)))
        cheap = costs.mean(axis=0) < 0.2 * costs.mean(axis=0)[priciest]
        cheap_correct = (scores[:, cheap] > 0).any(axis=1)
        entry: dict[str, object] = {
            "queries": int(rows.sum()),
            "best_model": test.models[best],
            "best_quality": float(scores[:, best].mean()),
            "best_cost": float(costs[:, best].mean()),
            "oracle_quality": float(scores.max(axis=1).mean()),
            "priciest_model": test.models[priciest],
            "priciest_quality": float(scores[:, priciest].mean()),
            "cheap_models": [m for m, c in zip(test.models, cheap, strict=True) if c],
            "cheap_model_correct_share": float(cheap_correct.mean()),
            "only_pricey_correct_share": float(((scores > 0).any(axis=1) & ~cheap_correct).mean()),
        }
        if ranking is not None:
            aurocs = {m: _auroc(scores[:, i], ranking.quality[rows, i]) for i, m in enumerate(test.models)}
            entry["correctness_auroc"] = aurocs
            valid = [v for v in aurocs.values() if v is not None]
            entry["mean_correctness_auroc"] = float(np.mean(valid)) if valid else None
        report[group] = entry
    return report


def target_check(rules: dict[str, dict[str, dict[str, dict[str, object]]]],
                 resampled: dict[tuple[str, str], np.ndarray]) -> dict[str, object]:
    """The issue's criterion: ranking's mean QNC (λ rule) ≤ 0.83 × the best baseline's (either rule),
    with RCI no higher than MLP score regression's (λ rule). Also the share of paired test-set
    bootstrap resamples (first seed) in which the QNC ratio holds."""
    candidates = [(rule, name, rules[rule][name]["qnc"]["mean"]) for rule in RULES for name in BASELINES
                  if name in rules[rule] and rules[rule][name]["qnc"]["mean"] is not None]
    ranking = rules["lambda"].get("ranking", {})
    ranking_qnc = ranking.get("qnc", {}).get("mean")
    if not candidates or ranking_qnc is None:
        return {"met": False, "reason": "the ranking router or every baseline never reaches the best model's quality"}
    rule, name, best_qnc = min(candidates, key=lambda c: float(c[2]))  # type: ignore[arg-type]
    ratio = float(ranking_qnc) / float(best_qnc)  # type: ignore[arg-type]
    regression = rules["lambda"]["mlp_regression"]
    rci_ok = {kind: float(ranking[kind]["mean"]) <= float(regression[kind]["mean"])  # type: ignore[arg-type]
              for kind in ("rci", "rci_paper")}
    ours, theirs = resampled[("lambda", "ranking")], resampled[(rule, name)]
    holds = np.isfinite(ours) & (~np.isfinite(theirs) | (ours <= TARGET_RATIO * theirs))
    return {"best_baseline": name, "best_baseline_rule": rule, "best_baseline_qnc": best_qnc,
            "ranking_qnc": ranking_qnc, "ratio": ratio, "required_ratio": TARGET_RATIO,
            "bootstrap_share_ratio_holds": float(holds.mean()),
            "qnc_met": ratio <= TARGET_RATIO, "rci_not_above_regression": rci_ok,
            "met": ratio <= TARGET_RATIO and all(rci_ok.values())}


def collapse_at_quality(sweeps: Sequence[Sweep], test: OutcomeTable, level: float) -> dict[str, dict[str, object]]:
    """Per rule and router: both RCIs, the priciest model's share and the cost ratio at the cheapest
    setting whose quality reaches ``level`` (None where the router never does)."""
    assert test.costs is not None
    best_cost = float(test.costs[:, best_single(test.scores, test.costs)].mean())
    priciest = int(np.argmax(test.costs.mean(axis=0)))
    report: dict[str, dict[str, object]] = {rule: {} for rule in RULES}
    for s in sweeps:
        reaching = np.flatnonzero(s.qualities >= level - 1e-12)
        if not reaching.size:
            report[s.rule][s.router] = None
            continue
        at = int(reaching[np.argmin(s.costs[reaching])])
        report[s.rule][s.router] = {"cost_ratio": float(s.costs[at] / best_cost),
                                    "rci": rci(s.choices[at], test.scores, test.costs),
                                    "rci_paper": rci_paper(s.choices[at], test.scores, test.costs),
                                    "priciest_share": float((s.choices[at] == priciest).mean())}
    return report


def run_study(
    train_paths: Sequence[Path], test_paths: Sequence[Path], seeds: Sequence[int] = (0, 1, 2, 3, 4),
    prompts: PromptView = "tail", cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, object], list[Sweep], Split]:
    """Fit every router on the train tables for every seed and sweep it on the test tables."""
    started = time.perf_counter()
    split = load_split(train_paths, test_paths, prompts, cache_dir)
    train, test = split.train, split.test
    assert train.costs is not None and test.costs is not None
    embedded = time.perf_counter() - started
    sweeps: list[Sweep] = []
    first_ranking: Estimates | None = None
    fitted_once: dict[str, Estimates] = {}
    for seed in seeds:
        for router in make_routers(seed, test):
            clock = time.perf_counter()
            if not hasattr(router, "seed") and router.name in fitted_once:
                estimates = fitted_once[router.name]
            else:
                router.fit(split.train_features, train.scores, train.costs)
                estimates = router.predict(split.test_features)
                if not hasattr(router, "seed"):
                    fitted_once[router.name] = estimates
            if isinstance(router, RankingRouter) and router.name == "ranking" and first_ranking is None:
                first_ranking = estimates
            for rule in RULES:
                choices = decide(estimates, rule)
                costs, qualities = operating_points(choices, test.scores, test.costs)
                sweeps.append(Sweep(router.name, rule, seed, choices, costs, qualities,
                                    sweep_metrics(choices, test.scores, test.costs)))
            if progress is not None:
                progress(f"seed {seed} {router.name}: {time.perf_counter() - clock:.1f}s")
    names = list(dict.fromkeys(s.router for s in sweeps))
    rules: dict[str, dict[str, dict[str, dict[str, object]]]] = {
        rule: {name: {metric: _stats([s.metrics[metric] for s in sweeps if s.router == name and s.rule == rule])
                      for metric in METRICS} for name in names} for rule in RULES}
    bootstrap: dict[str, dict[str, dict[str, float]]] = {rule: {} for rule in RULES}
    resampled: dict[tuple[str, str], np.ndarray] = {}
    for s in sweeps:
        if s.seed == seeds[0]:
            values = resampled[(s.rule, s.router)] = bootstrap_qnc(s.choices, test.scores, test.costs)
            finite = values[np.isfinite(values)]
            bootstrap[s.rule][s.router] = {
                "p10": float(np.percentile(values, 10, method="nearest")),
                "p50": float(np.percentile(values, 50, method="nearest")),
                "p90": float(np.percentile(values, 90, method="nearest")),
                "never_share": float(1 - len(finite) / len(values))}
    name, best_quality, best_cost = best_single_model(test)
    first = [s for s in sweeps if s.seed == seeds[0]]
    regression_peak = next(s.metrics["peak_quality"] for s in first if s.router == "mlp_regression"
                           and s.rule == "lambda")
    assert regression_peak is not None
    summary: dict[str, object] = {
        "routers": {n: {m: rules["lambda"][n][m]["mean"] for m in ("aiq", "qnc", "rci", "peak_quality")}
                    for n in names},
        "rules": rules,
        "qnc_bootstrap_first_seed": bootstrap,
        "target": target_check(rules, resampled),
        "collapse_at_regression_peak": {"quality": regression_peak,
                                        "rules": collapse_at_quality(first, test, regression_peak)},
        "best_single_model": {"name": name, "quality": best_quality, "cost": best_cost},
        "headroom": headroom(test, first_ranking),
        "protocol": {"prompts": prompts, "shared_lines_stripped": len(split.shared_line_set), "seeds": list(seeds),
                     "lambda_settings": len(utility_sweep(np.zeros((1, 1)), np.zeros((1, 1)))),
                     "embedding_spread": split.spread, "embedding_seconds": embedded,
                     "total_seconds": time.perf_counter() - started},
        "data": {"train_prompts": len(train), "test_prompts": len(test),
                 "dropped_incomplete": {"train": train.dropped, "test": test.dropped},
                 "models": list(test.models)},
    }
    return summary, sweeps, split


def _number(value: object, digits: int = 3) -> str:
    return "—" if value is None else f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def _mean_sd(stats: dict[str, object], digits: int = 3, scale: float = 1.0) -> str:
    per_seed = stats["per_seed"]
    assert isinstance(per_seed, list)
    if stats["mean"] is None:
        reached = [v for v in per_seed if v is not None]
        if not reached:
            return "never"
        shown = ", ".join("never" if v is None else f"{v * scale:.{digits}f}" for v in per_seed)
        return f"{stats['reached']}/{len(per_seed)} seeds: {shown}"
    mean, sd = float(stats["mean"]) * scale, float(stats["sd"]) * scale  # type: ignore[arg-type]
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if len(set(per_seed)) > 1 else f"{mean:.{digits}f}"


def markdown(summary: dict[str, object]) -> str:
    """The summary as markdown tables, one per decision rule."""
    best, rules, protocol = summary["best_single_model"], summary["rules"], summary["protocol"]
    bootstrap, target, room = summary["qnc_bootstrap_first_seed"], summary["target"], summary["headroom"]
    assert isinstance(best, dict) and isinstance(rules, dict) and isinstance(protocol, dict)
    assert isinstance(bootstrap, dict) and isinstance(target, dict) and isinstance(room, dict)
    seeds = protocol["seeds"]
    lines = [
        f"Test set: best single model **{best['name']}**, quality {best['quality']:.3f} at "
        f"${best['cost'] * 1000:.3f} per 1,000 queries. Prompts: {protocol['prompts']} "
        f"({protocol['shared_lines_stripped']} shared lines stripped); seeds {seeds}; mean ± sd over seeds "
        "(deterministic routers have no sd).",
        "",
    ]
    titles = {"lambda": "Decision rule: argmax score − λ·cost over a λ grid",
              "budget": "Decision rule: budget mask (drop models whose predicted cost exceeds C, take the best score)"}
    for rule in RULES:
        lines += [f"### {titles[rule]}", "",
                  "| router | AIQ | QNC | QNC test-bootstrap p10–p90 (seed 0) | quality at ½ best-model cost "
                  "| peak quality | RCI | RCI (paper) | at target: RCI / RCI (paper) / priciest share |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, stats in rules[rule].items():
            spread = bootstrap[rule][name]
            interval = "never" if not np.isfinite(spread["p10"]) else (
                f"{spread['p10']:.2f}–{_number(spread['p90'], 2) if np.isfinite(spread['p90']) else 'never'}")
            lines.append(f"| {name} | {_mean_sd(stats['aiq'], 4)} | {_mean_sd(stats['qnc'])} | {interval} | "
                         f"{_mean_sd(stats['quality_at_half_cost'])} | {_mean_sd(stats['peak_quality'])} | "
                         f"{_mean_sd(stats['rci'])} | {_mean_sd(stats['rci_paper'])} | "
                         f"{_mean_sd(stats['rci_at_target'], 2)} / {_mean_sd(stats['rci_paper_at_target'], 2)} / "
                         f"{_mean_sd(stats['priciest_share_at_target'], 2)} |")
        lines.append("")
    if "ratio" in target:
        lines += ["### Target", "",
                  f"Ranking router (λ rule) mean QNC {target['ranking_qnc']:.3f} against the best baseline, "
                  f"{target['best_baseline']} ({target['best_baseline_rule']} rule), "
                  f"{target['best_baseline_qnc']:.3f}: "
                  f"ratio **{target['ratio']:.3f}** (required ≤ {target['required_ratio']}; it holds in "
                  f"{target['bootstrap_share_ratio_holds']:.0%} of paired test-set bootstrap resamples); RCI not above "
                  f"score regression's: {target['rci_not_above_regression']}. Met: **{target['met']}**.", ""]
    else:
        lines += ["### Target", "", f"Not met: {target['reason']}.", ""]
    matched = summary["collapse_at_regression_peak"]
    assert isinstance(matched, dict)
    lines += [f"### Collapse at equal quality: the cheapest setting reaching score regression's peak quality "
              f"({matched['quality']:.3f}), seed {seeds[0]}", "",
              "| router | rule | cost / best model's | RCI | RCI (paper) | priciest model's share |",
              "| --- | --- | --- | --- | --- | --- |"]
    for rule in RULES:
        for name, entry in matched["rules"][rule].items():
            if entry is None:
                lines.append(f"| {name} | {rule} | never | — | — | — |")
            else:
                lines.append(f"| {name} | {rule} | {entry['cost_ratio']:.3f} | {entry['rci']:.3f} | "
                             f"{entry['rci_paper']:.3f} | {entry['priciest_share']:.3f} |")
    lines.append("")
    lines += ["### Where the oracle's headroom is (test set, per task)", "",
              "| task | queries | best model | its quality | oracle quality | some cheap model correct "
              "| only pricey models correct | mean AUROC of P(correct) from the embedding |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task, entry in room.items():
        lines.append(f"| {task} | {entry['queries']} | {entry['best_model']} | {entry['best_quality']:.3f} | "
                     f"{entry['oracle_quality']:.3f} | {entry['cheap_model_correct_share']:.3f} | "
                     f"{entry['only_pricey_correct_share']:.3f} | {_number(entry.get('mean_correctness_auroc'))} |")
    lines += ["", "AIQ: area under the non-decreasing convex hull of (cost, quality) over the single models' cost "
              "range, divided by that range. QNC: lowest mean cost of an operating point reaching the best single "
              "model's quality, over that model's cost (never: no seed-independent mean; per-seed values shown). "
              "The bootstrap column resamples the test queries (500 times) for seed 0: the spread of QNC that "
              "comes from which test queries were drawn. RCI: at the loosest budget, the share of queries sent to "
              "their most expensive model while a cheaper model was also correct. RCI (paper): the share whose "
              "pick is not among their best models, or is the most expensive model on average while a cheaper "
              "model is also best. \"At target\": the same at the cheapest setting reaching the best single model's "
              "quality (the QNC point). Cheap model: mean cost under 20% of the task's priciest model's. AUROC: "
              "how well the ranking router's probability (seed 0) separates a model's right and wrong answers "
              "within the task, averaged over models."]
    return "\n".join(lines) + "\n"


def plot(sweeps: Sequence[Sweep], test: OutcomeTable, out_dir: Path) -> None:
    """cost_quality.png (both rules) and model_shares_{lambda,budget}.png, for the first seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert test.costs is not None
    first = min(s.seed for s in sweeps)
    shown = [s for s in sweeps if s.seed == first]
    single_cost, single_quality = test.costs.mean(axis=0) * 1000, test.scores.mean(axis=0)
    figure, panels = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    for axes, rule in zip(panels, RULES, strict=True):
        for s in (s for s in shown if s.rule == rule):
            hull_cost, hull_quality = non_decreasing_hull(s.costs, s.qualities)
            line = axes.plot(hull_cost * 1000, hull_quality, label=f"{s.router} (AIQ {s.metrics['aiq']:.3f})")[0]
            axes.scatter(s.costs * 1000, s.qualities, s=6, color=line.get_color(), alpha=0.4)
        axes.scatter(single_cost, single_quality, marker="x", color="black", label="single models")
        for model, cost, quality in zip(test.models, single_cost, single_quality, strict=True):
            axes.annotate(model.split("/")[-1], (cost, quality), fontsize=6, xytext=(3, -3), textcoords="offset points")
        axes.axhline(single_quality.max(), color="grey", linewidth=0.6, linestyle=":")
        axes.set_xscale("log")
        axes.set_xlabel("cost, $ per 1,000 queries (log)")
        axes.set_title(f"{rule} rule (seed {first})")
        axes.legend(fontsize=7, loc="lower right")
    panels[0].set_ylabel("quality (share correct)")
    figure.tight_layout()
    figure.savefig(out_dir / "cost_quality.png", dpi=110)
    plt.close(figure)

    priciest = int(np.argmax(test.costs.mean(axis=0)))
    colours = [plt.get_cmap("tab20")(i % 20) for i in range(len(test.models))]
    for rule in RULES:
        chosen = [s for s in shown if s.rule == rule]
        columns = 3
        rows = -(-len(chosen) // columns)
        figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), sharey=True, squeeze=False)
        for axes, s in zip(grid.flat, chosen, strict=False):
            order = np.argsort(s.costs, kind="stable")
            shares = model_shares(s.choices, len(test.models))
            axes.stackplot(s.costs[order] * 1000, shares[order].T, labels=[m.split("/")[-1] for m in test.models],
                           colors=colours)
            axes.plot(s.costs[order] * 1000, shares[order, priciest], color="black", linewidth=1.5,
                      label=f"{test.models[priciest].split('/')[-1]} (priciest)")
            axes.set_title(f"{s.router}: RCI {s.metrics['rci']:.2f} / paper {s.metrics['rci_paper']:.2f}", fontsize=9)
            axes.set_xlabel("cost, $ per 1,000 queries")
        for axes in grid.flat[len(chosen):]:
            axes.axis("off")
        grid[0, 0].set_ylabel("share of calls")
        grid[0, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
        figure.suptitle(f"Model shares against budget, {rule} rule (seed {first})")
        figure.tight_layout()
        figure.savefig(out_dir / f"model_shares_{rule}.png", dpi=100)
        plt.close(figure)


def export_prerouter(split: Split, path: Path, seed: int = 0) -> float:
    """Fit the ranking router on the train split and save it as a pre-router file; its λ is the
    cheapest setting that reaches the best single model's quality on the train split (in sample)."""
    from pipelines.prerouter_export import export_router, lambda_for_quality, save

    train = split.train
    assert train.costs is not None
    router = RankingRouter(seed)
    router.fit(split.train_features, train.scores, train.costs)
    best = best_single(train.scores, train.costs)
    lam = lambda_for_quality(router, split.train_features, train.scores, train.costs,
                             float(train.scores[:, best].mean()))
    save(export_router(router, train.models, lam, shared_lines=split.shared_line_set,
                       default_chars=float(np.median(split.train_features.prompt_chars))), path)
    return lam


def write_report(
    train_paths: Sequence[Path], test_paths: Sequence[Path], out_dir: Path, seed: int = 0, seeds: int = 5,
    prompts: PromptView = "tail", cache_dir: Path | None = None, export: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Run the study over seeds ``seed .. seed + seeds - 1`` and write summary.json, summary.md and plots
    (and, with ``export``, the ranking router as a pre-router file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, sweeps, split = run_study(train_paths, test_paths, tuple(range(seed, seed + seeds)), prompts,
                                       cache_dir, progress)
    if export is not None:
        summary["exported_prerouter"] = {"path": str(export), "lambda": export_prerouter(split, export, seed)}
    (out_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out_dir / "summary.md").write_text(markdown(summary))
    plot(sweeps, split.test, out_dir)
    return summary
