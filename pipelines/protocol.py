"""``cascade evaluate --protocol grouped``: held-out evaluation of deferral over repeated grouped splits.

Questions are split by group (the SQuAD article; the HotpotQA question) into fit / calibrate / test
parts, ``splits`` times with different seeds. Every method ranks the test questions by an escalation
score; its deferral curve is routed quality against the share escalated (linear across answers whose
scores tie: the expected curve in a random order of them, never the file's order), and its area
(AUDC) sums the curve up. Every figure comes with a 95% interval from a paired bootstrap of the
groups: questions of one article are not independent, so a resample draws whole articles, and
every method and every split reads the same resamples (a figure's resample is the mean over the
splits of the same resampled articles), so differences between methods are judged against their
own noise.

Baselines: random, the seed presets v1–v3 (binary rules: their flagged answers first), Chow-average
(mean logprob), sum of logprobs, Chow-quantile (min, 10th, 25th, 50th percentile logprob), the oracle.
Learned: logistic and gradient-boosted deferral on the token features, for both targets. Before
generation: a pre-router, logistic on the question's embedding (the cache's embedder), which is
what a pre-routing stage can know before the small model answers; if it ranks no better than
random, sending questions straight to the large tier cannot beat the cascade.

A threshold with a guarantee (``guaranteed_threshold``): upper confidence bound calibration keeps the
most permissive threshold whose Clopper–Pearson bounds hold routed quality at ≥ target × large-only
quality with probability ≥ 1 − δ for questions drawn like the calibration ones. It is judged two
ways: calibrated on the calibration split and realized on the test split (new articles, and a finite
test set, so both article shift and test noise count against it), and in-domain — calibrated on 200
questions drawn from the held-out questions and judged on all of them, which is the guarantee's own
assumption with no test noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from cascade.embeddings import Embedder
from cascade.policies import PRESETS
from cascade.signals import SignalBatch
from pipelines.calibrate import CalibrationRecord
from pipelines.deferral import DeferralModel, ModelKind, Target, feature_matrix, feature_names, labels_of
from pipelines.hybrid import routing_costs
from pipelines.outcomes import outcomes_of, usable_records

FRACTIONS = (0.5, 0.2, 0.3)  # fit, calibrate, test (by questions, whole groups at a time)
LEVELS = (0.97, 0.99)
IN_DOMAIN_CALIBRATION = 200  # questions drawn from the held-out questions to calibrate a guaranteed threshold
IN_DOMAIN_DRAWS = 10  # draws per split
PREROUTER = "pre-router (question embedding)"
SHARE_LIMITS = {"cost": np.inf, "small_skipped": 1.0}  # a cascade can cost more than large-only; a share cannot pass 1
CASCADE_SCORE = "min logprob (Chow-quantile)"  # the cascade's deferral score when pre-routing is compared
LEARNED: tuple[tuple[ModelKind, Target], ...] = (("logistic", "small_wrong"), ("logistic", "escalation_helps"),
                                                 ("boosted", "small_wrong"), ("boosted", "escalation_helps"))


@dataclass(frozen=True)
class Data:
    """The records as arrays, one row per usable question."""

    features: np.ndarray
    signals: SignalBatch
    small: np.ndarray
    large: np.ndarray
    groups: np.ndarray
    small_cost: np.ndarray
    large_cost: np.ndarray
    embeddings: np.ndarray | None = None  # the questions', for the pre-router
    left_out: int = 0  # records without two tiers' answers (a prompt longer than a model's context)

    @classmethod
    def of(cls, records: Sequence[CalibrationRecord], metric: str = "exact_match",
           contexts: Mapping[str, str] | None = None, embedder: Embedder | None = None) -> Data:
        usable = usable_records(records)
        if len(usable) < 20:
            raise ValueError(f"{len(usable)} usable records: too few for a held-out protocol")
        outcomes = outcomes_of(usable, metric)
        return cls(features=feature_matrix(usable, contexts), signals=outcomes.signals,
                   small=outcomes.small_correct, large=outcomes.large_correct,
                   groups=np.array([r.group or r.id for r in usable]),
                   small_cost=outcomes.small_cost, large_cost=outcomes.large_cost,
                   embeddings=embedder.embed([r.question for r in usable]) if embedder is not None else None,
                   left_out=len(records) - len(usable))


@dataclass(frozen=True)
class Split:
    fit: np.ndarray
    calibrate: np.ndarray
    test: np.ndarray


def grouped_splits(groups: np.ndarray, splits: int, seed: int = 0) -> list[Split]:
    """``splits`` random partitions into fit / calibrate / test that never cut a group."""
    names, sizes = np.unique(groups, return_counts=True)
    if len(names) < 3:
        raise ValueError(f"{len(names)} groups: a grouped split needs at least three")
    result = []
    for number in range(splits):
        order = np.random.default_rng(seed + number).permutation(len(names))
        share = np.cumsum(sizes[order]) / sizes.sum()
        part = np.searchsorted(np.cumsum(FRACTIONS)[:2], share - sizes[order] / sizes.sum() / 2, side="right")
        part[0], part[-1] = 0, 2  # never an empty fit or test part
        if not (part == 1).any():
            part[len(part) // 2] = 1
        chosen = {p: set(names[order][part == p]) for p in range(3)}
        result.append(Split(*(np.flatnonzero(np.isin(groups, list(chosen[p]))) for p in range(3))))
    return result


def oracle_score(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """Escalate where it helps first, where it changes nothing next, where it hurts last."""
    return (large - small) + 0.5


def baseline_scores(data: Data, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Escalation scores of the baselines for every question (higher: escalate first)."""
    column = feature_names().index
    scores = {"random": rng.random(len(data.small))}
    for name, preset in PRESETS.items():
        scores[f"preset {name}"] = preset.decide(data.signals).escalate.astype(np.float64)
    scores["mean logprob (Chow-average)"] = -data.signals.column("mean_logprob")
    scores["sum logprob"] = -data.features[:, column("sum_logprob")]
    for q in ("00", "10", "25", "50"):
        label = "min logprob (Chow-quantile)" if q == "00" else f"logprob q{q} (Chow-quantile)"
        scores[label] = -data.features[:, column(f"logprob_q{q}")]
    return scores


def learned_scores(data: Data, split: Split, seed: int) -> dict[str, np.ndarray]:
    """Each learned model fitted on the fit part, calibrated on the calibrate part, scored everywhere."""
    scores = {}
    for kind, target in LEARNED:
        wanted = labels_of(data.small, data.large, target)
        try:
            model = DeferralModel.fit(data.features[split.fit], wanted[split.fit], kind, target, seed)
        except ValueError:
            continue
        model.calibrate(data.features[split.calibrate], wanted[split.calibrate])
        scores[f"learned {kind} ({target.replace('_', ' ')})"] = model.escalation_score(data.features)
    return scores


def prerouter_score(data: Data, split: Split) -> dict[str, np.ndarray]:
    """P(small wrong | question embedding), logistic, fitted on the fit part: a pre-router's ranking."""
    from sklearn.linear_model import LogisticRegression

    wrong = labels_of(data.small, data.large, "small_wrong")
    if data.embeddings is None or len(np.unique(wrong[split.fit])) < 2:
        return {}
    model = LogisticRegression(C=1.0, max_iter=2000).fit(data.embeddings[split.fit], wrong[split.fit])
    return {PREROUTER: model.predict_proba(data.embeddings)[:, 1]}


def group_bootstrap(groups: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples + 1, n) question weights: row 0 all ones (the sample itself), then one resample of
    the groups per row, each question weighted by how often its group was drawn."""
    names, index = np.unique(groups, return_inverse=True)
    counts = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=resamples)
    return np.vstack([np.ones(len(groups)), counts[:, index]]).astype(np.float64)


def weighted_curves(score: np.ndarray, small: np.ndarray, large: np.ndarray,
                    weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deferral curves for each row of bootstrap ``weights``: (share escalated, quality), both (B, n+1);
    NaN in a row whose weights are all zero. Answers with tied scores share their block's mean gain,
    so the curve is linear across a tie instead of following the rows' order."""
    order = np.lexsort((np.arange(len(score)), -score))
    w = weights[:, order]
    ranked = score[order]
    new_block = np.concatenate([[True], ranked[1:] != ranked[:-1]])
    starts, block = np.flatnonzero(new_block), np.cumsum(new_block) - 1
    gain = w * (large[order] - small[order])
    block_weight = np.add.reduceat(w, starts, axis=1)
    rate = np.divide(np.add.reduceat(gain, starts, axis=1), block_weight,
                     out=np.zeros_like(block_weight), where=block_weight > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = w.sum(axis=1, keepdims=True)
        shares = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w, axis=1) / total], axis=1)
        base = (w * small[order]).sum(axis=1, keepdims=True)
        gains = np.cumsum(w * rate[:, block], axis=1)
        quality = np.concatenate([base, base + gains], axis=1) / total
    return shares, quality


def curve_area(shares: np.ndarray, quality: np.ndarray) -> np.ndarray:
    return np.asarray(np.trapezoid(quality, shares, axis=1))


def savings(shares: np.ndarray, quality: np.ndarray, needed: np.ndarray) -> np.ndarray:
    """Share of large calls saved at the least escalation whose quality reaches ``needed`` (per row)."""
    meets = quality >= needed[:, None] - 1e-12
    first = np.where(meets.any(axis=1), np.argmax(meets, axis=1), shares.shape[1] - 1)
    return 1.0 - shares[np.arange(len(shares)), first]


def kl_bound(mean: np.ndarray | float, n: int, delta: float, upper: bool) -> np.ndarray:
    """Hoeffding's binomial-KL bound on the mean of ``n`` independent values in [0, 1] from their sample
    ``mean``: the largest (``upper``) or smallest mean p with n·kl(mean ‖ p) ≤ log(1/δ), which holds
    with probability ≥ 1 − δ whatever the values' law (0/1 outcomes or token F1 alike)."""
    from scipy.special import xlogy

    q = np.clip(np.asarray(mean, dtype=np.float64), 0.0, 1.0)
    budget = np.log(1.0 / delta) / n
    low, high = (q, np.ones_like(q)) if upper else (np.zeros_like(q), q)
    for _ in range(60):
        middle = (low + high) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = xlogy(q, q) - xlogy(q, middle) + xlogy(1 - q, 1 - q) - xlogy(1 - q, 1 - middle)
        within = kl <= budget
        if upper:
            low, high = np.where(within, middle, low), np.where(within, high, middle)
        else:
            low, high = np.where(within, low, middle), np.where(within, middle, high)
    return high if upper else low


def guaranteed_threshold(score: np.ndarray, small: np.ndarray, large: np.ndarray, level: float,
                         delta: float) -> float:
    """The most permissive threshold (escalate when score ≥ threshold) whose routed quality stays at
    ``level`` × large-only quality with probability ≥ 1 − ``delta``, for questions drawn like these.

    Upper confidence bound calibration (Learn-then-Test with a monotone loss): walking from
    "escalate everything" towards escalating less, the loss (what the large answer scores above the
    small one, summed over the answers kept) only grows; the threshold kept is the last one whose
    upper bound (level 1 − δ/2) on the mean loss stays within (1 − level) × the lower bound (1 − δ/2)
    of large-only quality. Clopper–Pearson bounds where both scores are 0 or 1 (exact match), the
    binomial-KL bound otherwise (token F1). Questions where the small answer scores higher are not
    counted in the small tier's favour, so the bound is conservative.
    """
    from scipy.stats import beta

    n = len(score)
    binary = bool(np.isin(small, (0.0, 1.0)).all() and np.isin(large, (0.0, 1.0)).all())
    if binary:
        right = int(large.sum())
        large_lower = float(beta.ppf(delta / 2, right, n - right + 1)) if right else 0.0
    else:
        large_lower = float(kl_bound(float(large.mean()), n, delta / 2, upper=False))
    allowed = (1.0 - level) * large_lower
    lost = np.clip(large - small, 0.0, 1.0)
    thresholds = np.concatenate([[-np.inf], np.unique(score), [np.inf]])  # escalating fewer and fewer
    order = np.argsort(score, kind="stable")
    lost_below = np.concatenate([[0.0], np.cumsum(lost[order])])  # lost among the i lowest scores
    kept = np.searchsorted(score[order], thresholds, side="left")  # answers below each threshold
    k = lost_below[kept]
    if binary:
        whole = np.rint(k).astype(np.int64)
        upper = np.where(whole >= n, 1.0, beta.ppf(1 - delta / 2, whole + 1, np.maximum(n - whole, 1)))
    else:
        upper = kl_bound(k / n, n, delta / 2, upper=True)
    upper[0] = 0.0  # escalating everything loses nothing
    failing = np.flatnonzero(~(upper <= allowed))  # a NaN score or outcome fails, never passes
    last = (failing[0] - 1) if failing.size else len(thresholds) - 1
    return float(thresholds[max(last, 0)])


def in_domain_guarantee(score: np.ndarray, small: np.ndarray, large: np.ndarray, population: np.ndarray,
                        level: float, delta: float, size: int, rng: np.random.Generator) -> dict[str, float]:
    """The guarantee under its own assumption: calibrate on ``size`` questions drawn at random from
    ``population`` (indices), then judge the threshold on the whole population (the distribution the
    questions were drawn from: its risk exactly, with no test noise)."""
    drawn = rng.choice(population, size=min(size, len(population)), replace=False)
    threshold = guaranteed_threshold(score[drawn], small[drawn], large[drawn], level, delta)
    escalate = score[population] >= threshold
    routed = float(np.where(escalate, large[population], small[population]).mean())
    needed = level * float(large[population].mean())
    return {"quality_ratio": routed / max(float(large[population].mean()), 1e-12),
            "saved": float(1 - escalate.mean()), "violated": float(routed < needed - 1e-12)}


def realized(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {"violation_rate": float(np.mean([r["violated"] for r in rows])),
            "mean_quality_ratio": float(np.mean([r["quality_ratio"] for r in rows])),
            "mean_saved": float(np.mean([r["saved"] for r in rows])), "runs": len(rows)}


def _finite_interval(values: np.ndarray, upper: float) -> dict[str, float | None]:
    """Point (row 0) and basic bootstrap interval (the rest), clipped to [0, ``upper``], of a figure at a
    target that may be unreachable (inf; NaN: no question of the resample); see ``target_interval``."""
    point = float(values[0])
    rest = values[1:][np.isfinite(values[1:])]
    low, high = (np.percentile(rest, [2.5, 97.5]) if len(rest) else (np.nan, np.nan))
    low, high = np.clip([2 * point - high, 2 * point - low], 0.0, upper) if np.isfinite(point) else (low, high)
    return {"point": point if np.isfinite(point) else None, "low": float(low) if np.isfinite(low) else None,
            "high": float(high) if np.isfinite(high) else None, "reached": float(len(rest) / max(len(values) - 1, 1))}


def interval(values: np.ndarray) -> dict[str, float]:
    """Mean and 95% percentile interval of the resamples that hold questions (NaN rows left out)."""
    values = values[~np.isnan(values)]
    low, high = np.percentile(values, [2.5, 97.5])
    return {"mean": float(np.mean(values)), "low": float(low), "high": float(high)}


def target_interval(values: np.ndarray) -> dict[str, float]:
    """Point (row 0) and basic (reverse-percentile) bootstrap interval (the rest) of a figure read at a
    quality target, such as the calls saved at ≥ 97%: the best setting is picked on the sample itself,
    so a resample's noise lets it pass sooner and the percentile interval sits beside the point; the
    basic interval takes that optimism back off (2·point − percentiles), clipped to [0, 1]."""
    point = float(values[0])
    rest = values[1:][~np.isnan(values[1:])]
    low, high = np.percentile(rest, [2.5, 97.5])
    return {"mean": float(np.mean(rest)), "low": float(np.clip(2 * point - high, 0.0, 1.0)),
            "high": float(np.clip(2 * point - low, 0.0, 1.0))}


def over_splits(values: Sequence[np.ndarray]) -> np.ndarray:
    """Each resample's figure averaged over the splits whose test part it holds questions of."""
    stacked = np.asarray(values, dtype=np.float64)
    held = ~np.isnan(stacked)
    with np.errstate(invalid="ignore"):
        return np.asarray(np.where(held, stacked, 0.0).sum(axis=0) / held.sum(axis=0))


def method_figures(per_method: Mapping[str, Mapping[str, list[np.ndarray]]]) -> dict[str, dict[str, Any]]:
    """{method: {metric: point and interval}} from each split's (B + 1,) rows, averaged over splits: the
    area with a percentile interval, the figures at a target with ``target_interval``."""
    figures: dict[str, dict[str, Any]] = {}
    for name, metrics in per_method.items():
        figures[name] = {}
        for metric, values in metrics.items():
            mean = over_splits(values)
            spread = target_interval(mean) if metric.startswith("saved_at") else interval(mean[1:])
            figures[name][metric] = {**spread, "point": float(mean[0]), "splits": len(values)}
    return figures


def run_protocol(data: Data, *, splits: int = 10, seed: int = 0, bootstrap: int = 500, delta: float = 0.1,
                 on_split: Callable[[int], None] = lambda number: None) -> dict[str, Any]:
    """The whole protocol as one JSON-ready dictionary (see the module docstring)."""
    parts = grouped_splits(data.groups, splits, seed)
    rng = np.random.default_rng(seed)
    resampled = group_bootstrap(data.groups, bootstrap, rng)
    per_method: dict[str, dict[str, list[np.ndarray]]] = {}
    guarantee: dict[str, list[dict[str, float]]] = {}
    in_domain: dict[str, list[dict[str, float]]] = {}
    routing: dict[str, dict[str, list[np.ndarray]]] = {}
    curves: dict[str, list[np.ndarray]] = {}
    grid = np.linspace(0.0, 1.0, 51)
    for number, split in enumerate(parts):
        scores = {**baseline_scores(data, rng), **learned_scores(data, split, seed + number),
                  **prerouter_score(data, split), "oracle": oracle_score(data.small, data.large)}
        test = split.test
        small, large = data.small[test], data.large[test]
        weights = resampled[:, test]
        held = weights.sum(axis=1) > 0  # a resample may draw none of this split's test articles
        with np.errstate(invalid="ignore", divide="ignore"):
            large_quality = (weights * large).sum(axis=1) / weights.sum(axis=1)
        for name, score in scores.items():
            shares, quality = weighted_curves(score[test], small, large, weights)
            figures = per_method.setdefault(name, {"audc": [], **{f"saved_at_{round(lv * 100)}": [] for lv in LEVELS}})
            figures["audc"].append(curve_area(shares, quality))
            for level in LEVELS:
                figures[f"saved_at_{round(level * 100)}"].append(savings(shares, quality, level * large_quality))
            curves.setdefault(name, []).append(np.interp(grid, shares[0], quality[0]))
            if name.startswith("learned") or name.startswith("min logprob"):
                cal = split.calibrate
                held_out = np.concatenate([split.calibrate, split.test])
                for level in LEVELS:
                    threshold = guaranteed_threshold(score[cal], data.small[cal], data.large[cal], level, delta)
                    escalate = score[test] >= threshold
                    routed = float(np.where(escalate, large, small).mean())
                    guarantee.setdefault(f"{name} @ {round(level * 100)}%", []).append({
                        "quality_ratio": routed / max(float(large.mean()), 1e-12),
                        "saved": float(1 - escalate.mean()), "violated": float(routed < level * large.mean())})
                    in_domain.setdefault(f"{name} @ {round(level * 100)}%", []).extend(
                        in_domain_guarantee(score, data.small, data.large, held_out, level, delta,
                                            IN_DOMAIN_CALIBRATION, rng) for _ in range(IN_DOMAIN_DRAWS))
        if PREROUTER in scores:
            with np.errstate(invalid="ignore", divide="ignore"):  # resamples without this split's articles
                modes = routing_costs(scores[PREROUTER][test], scores[CASCADE_SCORE][test], small, large,
                                      data.small_cost[test], data.large_cost[test], weights, LEVELS[0])
            for mode, by_metric in modes.items():
                for metric, values in by_metric.items():
                    routing.setdefault(mode, {}).setdefault(metric, []).append(np.where(held, values, np.nan))
        on_split(number + 1)
    methods = method_figures(per_method)
    audc = {name: over_splits(figures["audc"]) for name, figures in per_method.items()}
    presets = [n for n in audc if n.startswith("preset")]
    best_preset = max(presets, key=lambda n: audc[n][0])
    learned = [n for n in audc if n.startswith("learned")]
    best_learned = max(learned, key=lambda n: audc[n][0]) if learned else None
    comparisons = {}
    if best_learned is not None:
        for other in (best_preset, "min logprob (Chow-quantile)"):
            difference = (audc[best_learned] - audc[other])[1:]
            comparisons[f"{best_learned} − {other}"] = {**interval(difference),
                                                         "point": float((audc[best_learned] - audc[other])[0])}
    return {
        "n": len(data.small), "left_out": data.left_out, "groups": len(np.unique(data.groups)), "splits": splits,
        "bootstrap": bootstrap,
        "delta": delta, "fractions": dict(zip(("fit", "calibrate", "test"), FRACTIONS, strict=True)),
        "small_quality": float(data.small.mean()), "large_quality": float(data.large.mean()),
        "methods": methods, "best_preset": best_preset, "best_learned": best_learned, "audc_differences": comparisons,
        "guarantee": {name: realized(rows) for name, rows in guarantee.items()},
        "guarantee_in_domain": {name: realized(rows) for name, rows in in_domain.items()},
        "routing_modes": {mode: {metric: _finite_interval(over_splits(values), SHARE_LIMITS[metric])
                                 for metric, values in figures.items()} for mode, figures in routing.items()},
        "routing_modes_cascade_score": CASCADE_SCORE,
        "in_domain_calibration": IN_DOMAIN_CALIBRATION,
        "curves": {"shares": grid.tolist(), **{name: np.mean(c, axis=0).tolist() for name, c in curves.items()}},
    }


def _cell(figure: Mapping[str, float]) -> str:
    return f"{figure['point']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def methods_table(methods: Mapping[str, Any], splits: int | None = None) -> list[str]:
    """The methods' AUDC and savings as markdown rows, best area first; with ``splits``, a method that
    could not be fitted on every split (a fit part of one class) says on how many it was."""
    lines = ["| method | AUDC | large calls saved at ≥97% | at ≥99% |", "| --- | --- | --- | --- |"]
    for name, figures in sorted(methods.items(), key=lambda item: -item[1]["audc"]["point"]):
        had = figures["audc"].get("splits", splits)
        label = f"{name} ({had} of {splits} splits)" if splits is not None and had != splits else name
        lines.append(f"| {label} | {_cell(figures['audc'])} | {_cell(figures['saved_at_97'])} | "
                     f"{_cell(figures['saved_at_99'])} |")
    return lines


def _maybe(figure: Mapping[str, float | None]) -> str:
    if figure["point"] is None or figure["low"] is None or figure["high"] is None:
        return "never"
    return f"{figure['point']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def markdown(summary: Mapping[str, Any], title: str) -> str:
    lines = [f"# {title}", "",
             f"{summary['n']} questions in {summary['groups']} groups ({summary.get('left_out', 0)} records left out: "
             "no answer from both tiers, a prompt longer than a model's context); "
             f"{summary['splits']} grouped splits "
             f"(fit/calibrate/test {summary['fractions']['fit']}/{summary['fractions']['calibrate']}/"
             f"{summary['fractions']['test']}); 95% paired-bootstrap intervals ({summary['bootstrap']} resamples "
             "of the groups, each read in every split's test part and averaged over the splits; basic intervals "
             "for the calls saved at a target, whose "
             f"threshold is picked on the test split itself). Small-only quality {summary['small_quality']:.3f}, "
             f"large-only {summary['large_quality']:.3f}.", "", *methods_table(summary["methods"], summary["splits"])]
    lines += ["", "AUDC differences (paired):", ""]
    lines += [f"- {name}: {_cell(figure)}" for name, figure in summary["audc_differences"].items()]
    modes = summary.get("routing_modes", {})
    if modes:
        lines += ["", "Pre-routing against the cascade (deferral by "
                  f"{summary['routing_modes_cascade_score']}): cost at ≥ 97% of large-only quality as a share of "
                  "large-only cost, and the share of small-model calls skipped there (mean over splits [95% "
                  "interval]; reached: share of resamples where the target is reachable at all).", "",
                  "| mode | cost / large-only | small calls skipped | reached |", "| --- | --- | --- | --- |"]
        for mode, figures in modes.items():
            lines.append(f"| {mode} | {_maybe(figures['cost'])} | {_maybe(figures['small_skipped'])} | "
                         f"{figures['cost']['reached']:.2f} |")
    in_domain = summary.get("guarantee_in_domain", {})
    lines += ["", f"Thresholds with a guarantee (Learn-then-Test, δ = {summary['delta']}). New groups: calibrated "
              "on the calibration split, judged on the test split (other groups — articles, or questions where each is "
              "its own group — and finite). In-domain: calibrated on "
              f"{summary.get('in_domain_calibration', 0)} questions drawn from the held-out questions, judged on all "
              "of them (the guarantee's own assumption).",
              "", "| method @ target | new groups: violation rate | quality / large-only | large calls saved | "
              "in-domain: violation rate | quality / large-only | large calls saved |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in summary["guarantee"].items():
        inside = in_domain.get(name)
        tail = (f"{inside['violation_rate']:.2f} ({inside['runs']} draws) | {inside['mean_quality_ratio']:.3f} | "
                f"{inside['mean_saved']:.3f}") if inside else "— | — | —"
        lines.append(f"| {name} | {row['violation_rate']:.2f} | {row['mean_quality_ratio']:.3f} | "
                     f"{row['mean_saved']:.3f} | {tail} |")
    return "\n".join(lines) + "\n"


def plot(summary: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 5))
    shares = summary["curves"]["shares"]
    shown = ["random", "oracle", summary["best_preset"], "min logprob (Chow-quantile)",
             "mean logprob (Chow-average)", summary["best_learned"]]
    for name in dict.fromkeys(n for n in shown if n):
        axis.plot(shares, summary["curves"][name], label=name, linewidth=2 if name == summary["best_learned"] else 1)
    axis.axhline(summary["large_quality"], color="grey", linestyle=":", label="large only")
    axis.set_xlabel("share escalated to the large tier")
    axis.set_ylabel("routed quality (mean over test splits)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_protocol(records: Sequence[CalibrationRecord], out: Path, *, title: str, metric: str = "exact_match",
                   contexts: Mapping[str, str] | None = None, **options: Any) -> dict[str, Any]:
    """Run the protocol and write ``summary.json``, ``summary.md`` and ``deferral_curves.png`` to ``out``;
    the questions are embedded with the cache's default embedder for the pre-router."""
    from cascade.cache import CacheConfig

    summary = run_protocol(Data.of(records, metric, contexts, CacheConfig().embedder.build()), **options)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out / "summary.md").write_text(markdown(summary, title))
    plot(summary, out / "deferral_curves.png")
    return summary
