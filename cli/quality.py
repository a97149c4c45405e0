"""Quality commands: calibrate the tiers on real questions, fit and evaluate policies, the RouterBench study."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from cli.common import ConfigOption, DataDirOption, clear_errors, err, out
from services.settings import load_service_settings

if TYPE_CHECKING:
    from pipelines.calibrate import CalibrationRecord
    from pipelines.outcomes import Outcomes

RecordsOption = Annotated[Path, typer.Option("--records", help="calibration records (JSON lines)")]
LabelOption = Annotated[str, typer.Option(help="exact_match or f1")]
RowsOption = Annotated[str | None, typer.Option(
    "--rows", help="a slice of the records, START:STOP (e.g. :200 to fit, 200: to evaluate on the rest)")]


@clear_errors
def calibrate(
    dataset: Annotated[str, typer.Option("--dataset", help="squad, squad_v2 or hotpotqa")],
    out_file: Annotated[Path, typer.Option("--out", help="JSON-lines records; an existing file is resumed")],
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="first N questions")] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip the first questions (to split a run)")] = 0,
    samples: Annotated[int, typer.Option(help="sampled small-model answers per question (self-consistency)")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help=(
        "questions per engine call (vLLM batches them; llama.cpp answers one at a time)"))] = 1,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Run every tier on each question and record answers, signals, correctness, tokens, latency, cost."""
    from rich.progress import Progress

    from pipelines.calibrate import calibrate as run_calibration
    from pipelines.datasets import load_qa

    settings = load_service_settings(config)
    records = load_qa(dataset, data_dir or settings.data_dir, limit=None if limit is None else offset + limit)[offset:]
    with Progress(console=err) as progress:
        task = progress.add_task(f"calibrating {dataset}", total=len(records))
        written = asyncio.run(run_calibration(settings, records, out_file, samples=samples, batch_size=batch_size,
                                              on_progress=lambda done: progress.update(task, completed=done)))
    skipped = sum(r.error is not None for r in written)
    out.print(f"{len(written)} records in {out_file} ({skipped} skipped: prompt longer than a model's context)")


def _records(records: Path, rows: str | None = None) -> list[CalibrationRecord]:
    """The calibration records of a file, or the slice ``rows`` (START:STOP) of them."""
    from pipelines.calibrate import read_records

    if not records.is_file():
        raise ValueError(f"records file {records} does not exist")
    start, _, stop = (rows or ":").partition(":")
    try:
        chosen = slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise ValueError(f"--rows must look like START:STOP, not {rows!r}") from None
    read = read_records(records)
    if rows is not None:
        _refuse_a_cut_group(read, chosen)
    return read[chosen]


def _refuse_a_cut_group(read: list[CalibrationRecord], chosen: slice) -> None:
    """A slice that cuts a group (an article) in two would fit and judge on the same article: refuse it,
    naming the group and the rows where it could be cut instead."""
    inside = set(range(len(read))[chosen])
    where: dict[str, list[int]] = {}
    for row, record in enumerate(read):
        where.setdefault(record.group or record.id, []).append(row)
    for group, group_rows in where.items():
        if 0 < len(inside.intersection(group_rows)) < len(group_rows):
            raise ValueError(
                f"--rows cuts group {group!r} (rows {group_rows[0]} to {group_rows[-1]}): its questions would be "
                f"on both sides of the cut; cut at row {group_rows[0]} or {group_rows[-1] + 1}, or use "
                "--protocol grouped, which splits by group")


def _contexts(read: list[CalibrationRecord], data_dir: Path | None) -> dict[str, str]:
    """Each record's question context, from the dataset files (what the deferral features read)."""
    from pipelines.datasets import contexts_by_id

    return contexts_by_id({r.dataset for r in read}, data_dir or load_service_settings(None).data_dir)


def _outcomes(records: Path, label: str, rows: str | None = None, data_dir: Path | None = None,
              features: bool = False) -> Outcomes:
    """The records' outcomes; with ``features``, their signals carry the deferral features too."""
    from pipelines.outcomes import outcomes_of

    if label not in {"exact_match", "f1"}:
        raise ValueError(f"--label must be exact_match or f1, not {label!r}")
    read = _records(records, rows)
    return outcomes_of(read, label, _contexts(read, data_dir) if features else None)


@clear_errors
def fit(
    records: RecordsOption,
    out_file: Annotated[Path, typer.Option("--out", help="policy file to write")],
    policy: Annotated[str, typer.Option("--policy", help=(
        "deferral (boosted trees on the token-quantile features, the best held out), logistic (on the "
        "signals), threshold (the seed's rules) or min-logprob; --delta gives deferral and min-logprob a "
        "threshold with a guarantee"))] = "deferral",
    target: Annotated[float, typer.Option("--target", "--target-quality", min=0.0, max=1.0,
                                          help="routed quality to keep, as a share of large-only")] = 0.97,
    delta: Annotated[float | None, typer.Option("--delta", min=0.001, max=0.5, help=(
        "guarantee the target with probability 1 - delta (Learn-then-Test on these records)"))] = None,
    label: LabelOption = "exact_match",
    rows: RowsOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Fit a routing policy on calibration records (held-out calibration) and save it for the router."""
    from cascade.policies import DeferralPolicy, LogisticPolicy, ThresholdPolicy, save_policy
    from pipelines.fit import fit_deferral, fit_guaranteed, fit_logistic, fit_threshold

    if policy not in {"deferral", "logistic", "threshold", "min-logprob"}:
        raise ValueError(f"--policy must be deferral, logistic, threshold or min-logprob, not {policy!r}")
    if delta is not None and policy in {"logistic", "threshold"}:
        raise ValueError("--delta applies to --policy deferral or min-logprob")
    fitted: DeferralPolicy | LogisticPolicy | ThresholdPolicy
    if policy == "deferral":
        read = _records(records, rows)
        fitted, report = fit_deferral(read, _contexts(read, data_dir), target, delta, metric=label)
    elif policy == "min-logprob":
        if delta is None:
            raise ValueError("--policy min-logprob fits a threshold with a guarantee: give --delta")
        fitted, report = fit_guaranteed(_outcomes(records, label, rows), target, delta)
    else:
        outcomes = _outcomes(records, label, rows)
        fitted, report = (fit_logistic if policy == "logistic" else fit_threshold)(outcomes, target)
    save_policy(fitted.model_copy(update={"name": out_file.stem}), out_file)
    out.print(f"wrote {out_file}: {orjson.dumps(report).decode()}")


@clear_errors
def evaluate(
    records: RecordsOption,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for summary.json, summary.md and plots")],
    policy: Annotated[list[Path] | None, typer.Option("--policy", help="policy file (repeatable)")] = None,
    label: LabelOption = "exact_match",
    rows: RowsOption = None,
    protocol: Annotated[str, typer.Option(
        "--protocol", help="in-sample (policies on these records), grouped (held-out, repeated splits by article, "
                           "bootstrap intervals, baselines and learned deferral) or transfer (learned deferral "
                           "fitted on --fit-records, used on these)")] = "in-sample",
    splits: Annotated[int, typer.Option("--splits", min=1, help="grouped: random fit/calibrate/test splits")] = 10,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=10, help="grouped: resamples of the groups")] = 500,
    delta: Annotated[float, typer.Option("--delta", min=0.001, max=0.5,
                                         help="grouped: the guarantee's failure probability")] = 0.1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    fit_records: Annotated[Path | None, typer.Option(
        "--fit-records", help="transfer: records of the dataset the learned models are fitted on")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Cost–quality of routing policies on calibration records: in-sample curves of given policies, or
    the grouped held-out protocol with intervals, baselines, learned deferral and guaranteed thresholds."""
    if protocol in {"grouped", "transfer"}:
        if rows is not None:
            raise ValueError(f"--rows applies to --protocol in-sample; --protocol {protocol} splits by group itself")
        if protocol == "transfer" and fit_records is None:
            raise ValueError("--protocol transfer needs --fit-records, the records to fit the learned models on")
        read = [_records(file) for file in ([records] if fit_records is None else [records, fit_records])]
        contexts = _contexts([r for rows_read in read for r in rows_read], data_dir)
        if protocol == "grouped":
            from pipelines.protocol import markdown as protocol_markdown
            from pipelines.protocol import write_protocol

            title = f"Held-out deferral: {records.name}"
            summary = write_protocol(read[0], out_dir, title=title, metric=label, contexts=contexts, splits=splits,
                                     bootstrap=bootstrap, delta=delta, seed=seed)
            out.print(protocol_markdown(summary, title))
            return
        from pipelines.protocol import Data
        from pipelines.transfer import markdown as transfer_markdown
        from pipelines.transfer import unseen_by, write_transfer

        title = f"Transfer: fitted on {read[1][0].dataset if read[1] else '?'}, used on {records.name}"
        target = unseen_by(read[1], read[0])
        summary = write_transfer(Data.of(read[1], label, contexts), Data.of(target, label, contexts), out_dir,
                                 title=title, left_out=len(read[0]) - len(target), draws=splits, bootstrap=bootstrap,
                                 delta=delta, seed=seed)
        out.print(transfer_markdown(summary, title))
        return
    if protocol != "in-sample":
        raise ValueError(f"--protocol must be in-sample, grouped or transfer, not {protocol!r}")
    from pipelines.evaluate import markdown, write_evaluation

    summary = write_evaluation(_outcomes(records, label, rows, data_dir, features=True), policy or [], out_dir)
    out.print(markdown(summary))


@clear_errors
def study(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for records, policies, each dataset's results and "
                                                        "summary.md")],
    datasets: Annotated[str, typer.Option("--datasets", help="comma-separated: squad, squad_v2, hotpotqa")] = (
        "squad,squad_v2,hotpotqa"),
    limit: Annotated[int, typer.Option("--limit", min=1, help="first N questions of each dataset")] = 2000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="questions per engine call")] = 64,
    target: Annotated[float, typer.Option("--target-quality", min=0.0, max=1.0)] = 0.97,
    delta: Annotated[float, typer.Option("--delta", min=0.001, max=0.5)] = 0.1,
    splits: Annotated[int, typer.Option("--splits", min=1)] = 10,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=10)] = 500,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Calibrate → fit → evaluate the configured tiers on each QA dataset, with the seed's table beside the
    held-out savings (the GPU run: `make eval-gpu`)."""
    from pipelines.study import markdown as study_markdown
    from pipelines.study import run_study

    settings = load_service_settings(config)
    summary = run_study(settings, out_dir, datasets=[d.strip() for d in datasets.split(",") if d.strip()],
                        limit=limit, data_dir=data_dir or settings.data_dir, batch_size=batch_size, target=target,
                        delta=delta, splits=splits, bootstrap=bootstrap, progress=err.print)
    out.print(study_markdown(summary))


@clear_errors
def routerbench(
    train: Annotated[list[Path], typer.Option("--train", help="RouterBench CSV to train on (repeatable)")],
    test: Annotated[list[Path], typer.Option("--test", help="RouterBench CSV to test on (repeatable)")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for summary.json, summary.md and plots")],
    seed: Annotated[int, typer.Option(help="first seed of the random and learned routers")] = 0,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="seeds seed .. seed+seeds-1, mean ± sd")] = 5,
    prompts: Annotated[str, typer.Option(
        "--prompts", help="tail: embed prompts without the lines many training prompts share; whole: as stored")
    ] = "tail",
    embedding_cache: Annotated[Path | None, typer.Option(
        "--embedding-cache", help="embeddings on disk by text hash (default ~/.cache/cascade/embeddings)")] = None,
    export_prerouter: Annotated[Path | None, typer.Option(
        "--export-prerouter", help="write the fitted ranking router as a pre-router file (JSON)")] = None,
) -> None:
    """Pre-generation routers (baselines, kNN, MLP regression, ranking, EquiRouter, oracle) under both
    decision rules (score − λ·cost and the budget mask), over seeds."""
    from pipelines.routerbench import write_report

    if prompts not in {"tail", "whole"}:
        raise ValueError(f"--prompts must be tail or whole, not {prompts!r}")
    summary = write_report(train, test, out_dir, seed, seeds=seeds, prompts=prompts,  # type: ignore[arg-type]
                           cache_dir=embedding_cache, export=export_prerouter, progress=err.print)
    routers = summary["routers"]
    assert isinstance(routers, dict)
    def shown(value: object) -> str:
        return "never" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    for name, figures in routers.items():
        out.print(f"{name:>28}: QNC {shown(figures.get('qnc'))}  AIQ {shown(figures.get('aiq'))}  "
                  f"RCI {shown(figures.get('rci'))}  peak quality {shown(figures.get('peak_quality'))}",
                  highlight=False)
    if "target" in summary:
        out.print(f"target: {orjson.dumps(summary['target']).decode()}")
    out.print(f"wrote {out_dir}/summary.json, summary.md, cost_quality.png, model_shares_lambda.png, "
              "model_shares_budget.png")
