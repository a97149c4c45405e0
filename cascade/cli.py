"""The ``cascade`` command line."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cascade.config import ConfigError, load_settings
from cascade.engines.base import EngineError
from cascade.errors import validation_summary
from cascade.policies import PolicyFileError
from cascade.router import AllTiersFailedError
from cascade.schemas import Query, RoutedAnswer

if TYPE_CHECKING:
    from pipelines.outcomes import Outcomes

app = typer.Typer(help="cascade: answer with a small model, escalate to a large one only when needed.",
                  no_args_is_help=True, add_completion=False)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML settings file (env: CASCADE_*)")]
F = TypeVar("F", bound=Callable[..., Any])


def clear_errors(command: F) -> F:
    """Turn the errors a user can cause into one line on stderr and exit code 2, not a traceback."""
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cascade.local_redis import RedisSearchMissingError
        from pipelines.datasets import DatasetError

        try:
            return command(*args, **kwargs)
        except ValidationError as error:
            err.print(f"[red]error:[/red] {validation_summary(error, root='query')}")
        except (ConfigError, PolicyFileError, EngineError, DatasetError, AllTiersFailedError, RedisSearchMissingError,
                FileNotFoundError, ValueError) as error:
            err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2)
    return wrapper  # type: ignore[return-value]


async def _route(settings_path: Path | None, queries: list[Query]) -> list[RoutedAnswer]:
    from cascade.factory import build_router
    from cascade.telemetry import configure_from_env

    configure_from_env()
    router = build_router(load_settings(settings_path), with_redis=True)
    await router.start()
    try:
        return await router.route(queries)
    finally:
        await router.close()


UrlOption = Annotated[str | None, typer.Option("--url", help="a running router, e.g. http://127.0.0.1:8000")]
ApiKeyOption = Annotated[str | None, typer.Option("--api-key", envvar="CASCADE_API_KEY",
                                                  help="tenant API key for --url")]


def _ask_remote(url: str, api_key: str | None, question: str, context: list[str]) -> dict[str, Any]:
    """The routed answer from a running router, through the official ``openai`` client."""
    import openai

    client = openai.OpenAI(base_url=f"{url.rstrip('/')}/v1", api_key=api_key or "none", max_retries=2, timeout=600)
    try:
        response = client.completions.create(model="cascade", prompt=question, extra_body={"context": context})
    except openai.APIStatusError as error:
        raise ValueError(f"{url} answered {error.status_code}: {error.message}") from None
    except openai.APIConnectionError:
        raise ValueError(f"no router answers at {url}; start one with 'cascade serve'") from None
    return {"answer": response.choices[0].text, **(response.model_extra or {})["routing"]}


def _ask_local(config: Path | None, question: str, context: list[str]) -> dict[str, Any]:
    from services.openai_api import routing_object

    settings = load_settings(config)
    query = Query(prompt=question, context=context, params=settings.generation)
    [answer] = asyncio.run(_route(config, [query]))
    return {"answer": answer.answer, **routing_object(answer)}


@app.command()
@clear_errors
def ask(
    question: Annotated[str, typer.Argument(help="the question to answer")],
    context: Annotated[list[str] | None, typer.Option("--context", help="a context document (repeatable)")] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer and its routing as JSON")] = False,
) -> None:
    """Answer one question (in-process, or through a running router with --url) and show how it was routed."""
    answer = _ask_remote(url, api_key, question, context or []) if url else _ask_local(config, question, context or [])
    if as_json:
        sys.stdout.write(orjson.dumps(answer).decode() + "\n")
        return
    out.print(f"[bold]{answer['answer'] or '(empty answer)'}[/bold]")
    table = Table(show_header=False, box=None)
    degraded = " [red]degraded[/red]" if answer["degraded"] else ""
    table.add_row("tier", f"{answer['tier']} ({answer['model']}){degraded}")
    confidence = answer["confidence"]
    table.add_row("confidence", f"{confidence:.3f}" if confidence is not None else "-")
    if answer["signals"]:
        table.add_row("signals", ", ".join(f"{k}={v:.3g}" for k, v in answer["signals"].items()))
    table.add_row("reason", answer["reason"])
    table.add_row("cost", f"${answer['cost']:.8f} over {len(answer['attempts'])} tier(s)"
                  + (" (cache hit)" if answer["cache_hit"] else ""))
    table.add_row("latency", ", ".join(f"{stage} {ms:.0f} ms" for stage, ms in answer["latency_ms"].items()))
    out.print(table)


@app.command()
@clear_errors
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option("--host", help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="port to listen on (default 8000)")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="write the Serve config YAML (serve deploy, RayService) and exit")] = False,
    config_format: Annotated[str, typer.Option(
        "--format", help="with --print-config: serve (a Serve config) or rayservice-patch (kustomize)")] = "serve",
) -> None:
    """Serve the router's OpenAI API on a local Ray, with the configured (or embedded) model pools."""
    import signal
    import time

    import yaml

    from services.app import rayservice_patch, serve_config
    from services.local import serve_locally, stop_locally

    settings = load_settings(config)
    if print_config:
        if config_format not in {"serve", "rayservice-patch"}:
            raise ValueError(f"--format {config_format!r}: choose serve or rayservice-patch")
        if config_format == "serve":
            sys.stdout.write(yaml.safe_dump(serve_config(settings, host=host or "0.0.0.0"), sort_keys=False))
            return
        sys.stdout.write(f"# generated by: cascade serve --print-config --format rayservice-patch"
                         f"{f' --config {config}' if config else ''}\n{rayservice_patch(settings)}")
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    err.print("starting Ray, the model pools and the router …")
    try:
        url = serve_locally(settings, host=host, port=port)
        err.print(f"cascade is serving at {url} (OpenAI API at {url}/v1, health at {url}/healthz); Ctrl-C stops it")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_locally()


@app.command()
@clear_errors
def demo(
    n: Annotated[int, typer.Option("--n", min=1, help="questions from the SQuAD 2.0 subset")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print only the summary, as one JSON object")] = False,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="CASCADE_DATA_DIR",
                                                  help="evaluation data folder")] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="questions in flight at once")] = 8,
) -> None:
    """Send n SQuAD 2.0 questions through the router's HTTP API (starting it unless --url is given);
    compare small-only, large-only and routed exact match and cost."""
    from rich.progress import Progress

    from pipelines.datasets import load_squad
    from pipelines.demo import run_demo, summarize
    from pipelines.metrics import exact_match

    settings = load_settings(config)
    records = load_squad(data_dir or settings.data_dir, limit=n)
    if url is None:
        from services.local import serve_locally, stop_locally

        err.print("starting Ray, the model pools and the router (the semantic cache stays off for the demo) …")
        url = serve_locally(settings.model_copy(update={"cache": settings.cache.model_copy(update={"enabled": False})}),
                            quiet=True)
        stop: Callable[[], None] = stop_locally
    else:
        def stop() -> None:
            return None
    try:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("routing", total=len(records))
            rows = asyncio.run(run_demo(url, records, api_key=api_key, concurrency=concurrency,
                                        on_progress=lambda done: progress.update(task, completed=done)))
    finally:
        stop()
    summary = summarize(rows)
    if as_json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
        return
    table = Table(title=f"{len(rows)} SQuAD 2.0 questions")
    for column in ("question", "answer", "gold", "EM", "tier", "confidence"):
        table.add_column(column, overflow="fold")
    for row in rows:
        gold = " | ".join(row.record.answers) or "(unanswerable)"
        confidence = row.routed.routing["confidence"]
        table.add_row(row.record.question, row.routed.text, gold,
                      f"{exact_match(row.routed.text, row.record.answers):.0f}", row.routed.routing["tier"],
                      f"{confidence:.2f}" if confidence is not None else "-")
    out.print(table)
    em, cost = summary["exact_match"], summary["cost"]
    assert isinstance(em, dict) and isinstance(cost, dict)
    out.print(f"escalation rate {summary['escalation_rate']:.0%}, largest batch {summary['max_batch_size']}")
    for name in ("small", "large", "routed"):
        out.print(f"{name:>7}: exact match {em[name]:.3f}  cost ${cost[name]:.8f}")


@app.command()
@clear_errors
def calibrate(
    dataset: Annotated[str, typer.Option("--dataset", help="squad, squad_v2 or hotpotqa")],
    out_file: Annotated[Path, typer.Option("--out", help="JSON-lines records; an existing file is resumed")],
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="first N questions")] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip the first questions (to split a run)")] = 0,
    samples: Annotated[int, typer.Option(help="sampled small-model answers per question (self-consistency)")] = 0,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="CASCADE_DATA_DIR")] = None,
    config: ConfigOption = None,
) -> None:
    """Run every tier on each question and record answers, signals, correctness, tokens, latency, cost."""
    from rich.progress import Progress

    from pipelines.calibrate import calibrate as run_calibration
    from pipelines.datasets import load_qa

    settings = load_settings(config)
    records = load_qa(dataset, data_dir or settings.data_dir, limit=None if limit is None else offset + limit)[offset:]
    with Progress(console=err) as progress:
        task = progress.add_task(f"calibrating {dataset}", total=len(records))
        written = asyncio.run(run_calibration(settings, records, out_file, samples=samples,
                                              on_progress=lambda done: progress.update(task, completed=done)))
    skipped = sum(r.error is not None for r in written)
    out.print(f"{len(written)} records in {out_file} ({skipped} skipped: prompt longer than a model's context)")


RecordsOption = Annotated[Path, typer.Option("--records", help="calibration records (JSON lines)")]
LabelOption = Annotated[str, typer.Option(help="exact_match or f1")]
RowsOption = Annotated[str | None, typer.Option(
    "--rows", help="a slice of the records, START:STOP (e.g. :200 to fit, 200: to evaluate on the rest)")]


def _outcomes(records: Path, label: str, rows: str | None = None) -> Outcomes:
    from pipelines.calibrate import read_records
    from pipelines.outcomes import outcomes_of

    if label not in {"exact_match", "f1"}:
        raise ValueError(f"--label must be exact_match or f1, not {label!r}")
    if not records.is_file():
        raise ValueError(f"records file {records} does not exist")
    start, _, stop = (rows or ":").partition(":")
    try:
        chosen = slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise ValueError(f"--rows must look like START:STOP, not {rows!r}") from None
    return outcomes_of(read_records(records)[chosen], label)


@app.command()
@clear_errors
def fit(
    records: RecordsOption,
    policy: Annotated[str, typer.Option("--policy", help="logistic or threshold")],
    out_file: Annotated[Path, typer.Option("--out", help="policy file to write")],
    target: Annotated[float, typer.Option(help="routed quality to keep, as a share of large-only")] = 0.97,
    label: LabelOption = "exact_match",
    rows: RowsOption = None,
) -> None:
    """Fit a routing policy on calibration records (cross-validated) and save it for the router."""
    from cascade.policies import save_policy
    from pipelines.fit import fit_logistic, fit_threshold

    if policy not in {"logistic", "threshold"}:
        raise ValueError(f"--policy must be logistic or threshold, not {policy!r}")
    outcomes = _outcomes(records, label, rows)
    fitted, report = (fit_logistic if policy == "logistic" else fit_threshold)(outcomes, target)
    save_policy(fitted.model_copy(update={"name": out_file.stem}), out_file)
    out.print(f"wrote {out_file}: {orjson.dumps(report).decode()}")


@app.command()
@clear_errors
def evaluate(
    records: RecordsOption,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for summary.json, summary.md and plots")],
    policy: Annotated[list[Path] | None, typer.Option("--policy", help="policy file (repeatable)")] = None,
    label: LabelOption = "exact_match",
    rows: RowsOption = None,
) -> None:
    """Cost–quality curves of policies against small-only, large-only and the v1/v2/v3 presets."""
    from pipelines.evaluate import markdown, write_evaluation

    summary = write_evaluation(_outcomes(records, label, rows), policy or [], out_dir)
    out.print(markdown(summary))


@app.command()
@clear_errors
def routerbench(
    train: Annotated[list[Path], typer.Option("--train", help="RouterBench CSV to train on (repeatable)")],
    test: Annotated[list[Path], typer.Option("--test", help="RouterBench CSV to test on (repeatable)")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for summary.json, summary.md and plots")],
    seed: Annotated[int, typer.Option(help="seed of the random and learned routers")] = 0,
) -> None:
    """Pre-generation routers (random, kNN, MLP regression, ranking, oracle) swept over the budget."""
    from pipelines.routerbench import write_report

    summary = write_report(train, test, out_dir, seed)
    routers = summary["routers"]
    assert isinstance(routers, dict)
    for name, figures in routers.items():
        qnc = "never" if figures["qnc"] is None else f"{figures['qnc']:.3f}"
        out.print(f"{name:>15}: AIQ {figures['aiq']:.4f}  QNC {qnc}  RCI {figures['rci']:.3f}  "
                  f"peak quality {figures['peak_quality']:.3f}")
    out.print(f"wrote {out_dir}/summary.json, summary.md, cost_quality.png, model_shares.png")


redis_app = typer.Typer(help="The local Redis (vector search) for the embedded default.", no_args_is_help=True)
app.add_typer(redis_app, name="redis")
PortOption = Annotated[int | None, typer.Option("--port", help="default: redis_port from the settings (6390)")]


def _local_redis(port: int | None, data_dir: Path | None = None) -> Any:
    from cascade.local_redis import LocalRedis

    return LocalRedis(port=port or load_settings().redis_port, data_dir=data_dir)


@redis_app.command("start")
@clear_errors
def redis_start(port: PortOption = None,
                data_dir: Annotated[Path | None, typer.Option(help="persist here (default: no persistence)")] = None,
                ) -> None:
    """Start a local Redis with search and JSON modules on 127.0.0.1 (no-op if one answers)."""
    out.print(_local_redis(port, data_dir).start())


@redis_app.command("stop")
@clear_errors
def redis_stop(port: PortOption = None) -> None:
    """Stop the local Redis started by `cascade redis start`."""
    out.print("stopped" if _local_redis(port).stop() else "not running")


@redis_app.command("status")
@clear_errors
def redis_status(port: PortOption = None) -> None:
    """Whether the local Redis answers, its PID and log file."""
    out.print(orjson.dumps(_local_redis(port).status()).decode())


def _numbers(spec: str | None, kind: type = float) -> list[Any]:
    """Comma-separated numbers; ``policy`` in a threshold list means the tiers' own policies (None)."""
    values: list[Any] = []
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        if part == "policy":
            values.append(None)
            continue
        try:
            values.append(kind(part))
        except ValueError:
            raise ValueError(f"{part!r} in {spec!r} is not a number") from None
    return values


def _pairs(spec: str | None, option: str) -> dict[str, float]:
    """``name=value`` pairs, comma-separated."""
    pairs: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, _, value = part.partition("=")
        try:
            pairs[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{option} entry {part!r} must be name=number") from None
    return pairs


@app.command()
@clear_errors
def loadtest(
    url: Annotated[str, typer.Option("--url", help="the router to drive")] = "http://127.0.0.1:8000",
    mix: Annotated[str, typer.Option("--mix", help="datasets and weights")] = "squad:0.7,hotpotqa:0.3",
    concurrency: Annotated[str | None, typer.Option("--concurrency", help="closed-loop levels, e.g. 1,8,32")] = None,
    rate: Annotated[str | None, typer.Option("--rate", help="open-loop Poisson rates (requests/s), e.g. 1,4")] = None,
    requests: Annotated[int, typer.Option("--requests", help="questions per run, at most")] = 100,
    duration: Annotated[float, typer.Option("--duration", help="seconds per run, at most")] = 300.0,
    thresholds: Annotated[str, typer.Option(
        "--thresholds", help="routing thresholds to sweep; 'policy' is the tiers' own policies")] = "policy",
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the CSVs, summary.json and plot")] = Path(
        "loadtest-results"),
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="CASCADE_DATA_DIR")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="max_tokens per request")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="permit a non-loopback --url")] = False,
) -> None:
    """Drive a running router over HTTP and record throughput, latency, escalations, cost and quality."""
    from loadtest.run import run_loadtest

    def show(summary: dict[str, Any]) -> None:
        latency = summary["latency_ms"]
        err.print(f"{summary['label']:>16}: {summary['throughput_rps']:.2f} req/s, p50 {latency['p50']:.0f} ms, "
                  f"p99 {latency['p99']:.0f} ms, errors {summary['errors']}, escalation {summary['escalation_rate']}, "
                  f"cost/1k ${summary['cost_per_1k']}, F1 {summary['f1']}")

    summary = run_loadtest(url, mix=mix, concurrency=_numbers(concurrency, int), rates=_numbers(rate),
                           requests=requests, duration_s=duration, thresholds=_numbers(thresholds) or [None],
                           out=out_dir, data_dir=data_dir or load_settings().data_dir, seed=seed,
                           allow_remote=allow_remote, max_tokens=max_tokens, on_run=show)
    out.print(f"wrote {out_dir}/summary.json, runs.csv, requests.csv and cost_vs_throughput.png "
              f"({len(summary['runs'])} runs)")


@app.command()
@clear_errors
def plan(
    qps: Annotated[float, typer.Option("--qps", help="target queries per second")],
    escalation_rate: Annotated[float | None, typer.Option(
        "--escalation-rate", help="share of queries escalated (default: the load test's)")] = None,
    summary_path: Annotated[Path | None, typer.Option("--summary", help="a load test's summary.json")] = None,
    tier_rps: Annotated[str | None, typer.Option(
        "--tier-rps", help="per-replica throughput, e.g. small=12,large=3 (overrides the summary's)")] = None,
    price: Annotated[str, typer.Option("--price", help="dollars per replica-hour, e.g. small=0.6,large=2.5")] = "",
    utilization: Annotated[float, typer.Option("--utilization", help="target load per replica")] = 0.7,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Replica counts and hourly cost of each pool for a target load, from a load test's measurements."""
    from loadtest.plan import plan_capacity

    measured: dict[str, Any] = orjson.loads(summary_path.read_bytes()) if summary_path else {}
    runs = measured.get("runs", [])
    rates = [r["escalation_rate"] for r in runs if r.get("escalation_rate") is not None]
    escalation = escalation_rate if escalation_rate is not None else (sum(rates) / len(rates) if rates else None)
    if escalation is None:
        raise ValueError("give --escalation-rate or a --summary with measured runs")
    costs = [r["cost_per_1k"] for r in runs if r.get("cost_per_1k") is not None]
    result = plan_capacity(qps, escalation, {**measured.get("per_replica_rps", {}), **_pairs(tier_rps, "--tier-rps")},
                           _pairs(price, "--price"), utilization=utilization,
                           cost_per_1k=sum(costs) / len(costs) if costs else None)
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return
    table = Table(title=f"{qps:g} queries/s, {escalation:.0%} escalated, {utilization:.0%} utilization")
    for column in ("pool", "load (q/s)", "per replica (q/s)", "replicas", "$/hour"):
        table.add_column(column)
    for pool in result["pools"]:
        table.add_row(pool["tier"], f"{pool['load_qps']:g}", f"{pool['per_replica_rps']:g}", str(pool["replicas"]),
                      f"{pool['hourly_cost']:.2f}")
    out.print(table)
    out.print(f"total ${result['hourly_cost']:.2f}/hour, ${result['infrastructure_cost_per_1k']:.4f} per 1,000 queries"
              + (f" (+ ${result['model_cost_per_1k']:.6f} model cost measured per 1,000)"
                 if "model_cost_per_1k" in result else ""))


thresholds_app = typer.Typer(help="Online threshold control.", no_args_is_help=True)
app.add_typer(thresholds_app, name="thresholds")


@thresholds_app.command("run")
@clear_errors
def thresholds_run(
    target: Annotated[str, typer.Option(help="escalation_budget or quality")] = "escalation_budget",
    value: Annotated[float, typer.Option(help="max escalation rate, or min precision of accepted answers")] = 0.3,
    tier: Annotated[str, typer.Option(help="the tier whose threshold is controlled")] = "small",
    config: ConfigOption = None,
) -> None:
    """Consume the feedback stream and keep one threshold per tenant for the tier (Ctrl-C stops)."""
    from cascade.factory import resolve_redis
    from cascade.thresholds import ControllerConfig, ThresholdController, ThresholdTarget

    settings = load_settings(config)
    url = resolve_redis(settings)
    target_spec = ThresholdTarget.model_validate({"kind": target, "value": value, "tier": tier})
    controller = ThresholdController(url, ControllerConfig(target=target_spec, stream=settings.feedback.stream))
    err.print(f"controlling {tier} thresholds towards {target} {value} on {url}")
    try:
        asyncio.run(controller.run())
    except KeyboardInterrupt:
        err.print("stopped")


def main() -> None:
    """Entry point for ``python -m cascade``."""
    app()
