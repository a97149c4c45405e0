"""``cascade study``: calibrate → fit → evaluate a pair of tiers on the QA datasets, in one command.

For each dataset: every tier answers the first ``limit`` questions (records with their token series,
resumable), a logistic policy and a min-logprob threshold with a guarantee are fitted on them, and
the grouped held-out protocol ranks every deferral method with intervals. The summary puts the
seed project's table (small-only, large-only and the v1 preset's routed exact match and cost) next
to what held-out deferral saves at ≥ 97% of large-only quality. The GPU run of the seed's pair
(``infra/eval-gpu.yaml``, ``make eval-gpu``) and its CPU rehearsal with a tiny vLLM model in the tests
are this same function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from cascade.config import CoreSettings
from cascade.policies import PRESETS, save_policy
from pipelines.calibrate import calibrate
from pipelines.datasets import contexts_by_id, load_qa
from pipelines.fit import fit_guaranteed, fit_logistic
from pipelines.outcomes import outcomes_of, usable_records
from pipelines.protocol import write_protocol

DATASETS = ("squad", "squad_v2", "hotpotqa")
SEED_REFERENCE = {  # Qwen2.5-1.5B-Instruct → Llama-3.1-8B-Instruct, first 2,000 questions (../shared/data)
    "squad": {"small": 0.462, "large": 0.588, "routed": 0.569},
    "squad_v2": {"small": 0.117, "large": 0.258, "routed": 0.504},
    "hotpotqa": {"small": 0.248, "large": 0.425, "routed": 0.401},
}


def _study_one(settings: CoreSettings, dataset: str, out: Path, *, limit: int | None, data_dir: Path,
               batch_size: int, target: float, delta: float, splits: int, bootstrap: int) -> dict[str, Any]:
    questions = load_qa(dataset, data_dir, limit=limit)
    records = asyncio.run(calibrate(settings, questions, out / "records" / f"{dataset}.jsonl", batch_size=batch_size))
    row: dict[str, Any] = {"dataset": dataset, "questions": len(records),
                           "skipped": len(records) - len(usable_records(records))}
    outcomes = outcomes_of(records)
    large_cost = float(outcomes.large_cost.sum())
    quality, cost, escalation = outcomes.route(PRESETS["v1"].decide(outcomes.signals).escalate)
    row.update(small=float(outcomes.small_correct.mean()), large=float(outcomes.large_correct.mean()),
               v1={"routed": quality, "escalated": escalation, "cost_vs_large": cost / max(large_cost, 1e-12)})
    policies = out / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    for name, fitter in (("logistic", lambda: fit_logistic(outcomes, target)),
                         ("guaranteed", lambda: fit_guaranteed(outcomes, target, delta))):
        try:
            policy, report = fitter()
        except ValueError as error:  # e.g. the small answers are all wrong: nothing to learn from
            row[name] = {"error": str(error)}
            continue
        save_policy(policy.model_copy(update={"name": f"{dataset}-{name}"}), policies / f"{dataset}-{name}.json")
        row[name] = report
    try:
        summary = write_protocol(records, out / dataset, title=f"Held-out deferral: {dataset}",
                                 contexts=contexts_by_id([dataset], data_dir), splits=splits,
                                 bootstrap=bootstrap, delta=delta)
    except ValueError as error:  # too few usable records or groups for held-out splits
        row["held_out"] = {"error": str(error)}
        return row
    methods = summary["methods"]
    row["held_out"] = {name: {"audc": methods[name]["audc"], "saved_at_97": methods[name]["saved_at_97"]}
                       for name in dict.fromkeys((summary["best_learned"], "min logprob (Chow-quantile)",
                                                  summary["best_preset"], "random")) if name in methods}
    row["held_out_best_learned"] = summary["best_learned"]
    return row


def run_study(settings: CoreSettings, out: Path, *, datasets: Sequence[str] = DATASETS, limit: int | None = 2000,
              data_dir: Path, batch_size: int = 64, target: float = 0.97, delta: float = 0.1, splits: int = 10,
              bootstrap: int = 500, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """The whole study; writes ``summary.json`` and ``summary.md`` to ``out`` beside each dataset's folder."""
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; choose from {', '.join(DATASETS)}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in datasets:
        progress(f"{dataset}: calibrating, fitting, evaluating")
        rows.append(_study_one(settings, dataset, out, limit=limit, data_dir=data_dir, batch_size=batch_size,
                               target=target, delta=delta, splits=splits, bootstrap=bootstrap))
    tiers = [f"{t.name}: {getattr(t.engine, 'model', t.engine.kind)}" for t in settings.tiers]
    summary = {"tiers": tiers, "limit": limit, "target": target, "delta": delta, "datasets": rows,
               "seed_reference": SEED_REFERENCE}
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (out / "summary.md").write_text(markdown(summary))
    return summary


def _saved(row: dict[str, Any], name: str | None) -> str:
    figure = row.get("held_out", {}).get(name or "", {}).get("saved_at_97")
    if not figure:
        return "—"
    return f"{figure['point']:.2f} [{figure['low']:.2f}, {figure['high']:.2f}]"


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Study: {' → '.join(summary['tiers'])}", "",
             f"First {summary['limit']} questions of each dataset. Exact match; v1 is the seed project's rule, "
             "in-sample like the seed's table; the held-out columns are the share of large calls saved at ≥ "
             f"{summary['target']:.0%} of large-only quality on grouped test splits, mean [95% interval].", "",
             "| dataset | questions | small | large | v1 routed | v1 escalated | v1 cost / large-only | "
             "seed: small / large / routed | saved, min logprob | saved, best learned |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary["datasets"]:
        seed = summary["seed_reference"][row["dataset"]]
        v1 = row["v1"]
        lines.append(
            f"| {row['dataset']} | {row['questions'] - row['skipped']} | {row['small']:.3f} | {row['large']:.3f} | "
            f"{v1['routed']:.3f} | {v1['escalated']:.2f} | {v1['cost_vs_large']:.2f} | "
            f"{seed['small']:.3f} / {seed['large']:.3f} / {seed['routed']:.3f} | "
            f"{_saved(row, 'min logprob (Chow-quantile)')} | {_saved(row, row.get('held_out_best_learned'))} |")
    notes = [f"- {row['dataset']}: {part} — {row[part]['error']}" for row in summary["datasets"]
             for part in ("logistic", "guaranteed", "held_out") if "error" in row.get(part, {})]
    if notes:
        lines += ["", "Not computed:", "", *notes]
    return "\n".join(lines) + "\n"
