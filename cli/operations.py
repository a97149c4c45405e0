"""Operations commands: the local Redis, the threshold controller, load tests and capacity plans."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from cli.common import ConfigOption, DataDirOption, clear_errors, err, numbers, out, pairs
from services.settings import load_service_settings

redis_app = typer.Typer(help="The local Redis (vector search) for the embedded default.", no_args_is_help=True)
thresholds_app = typer.Typer(help="Online threshold control.", no_args_is_help=True)
cache_app = typer.Typer(help="The semantic cache.", no_args_is_help=True)
PortOption = Annotated[int | None, typer.Option("--port", help="default: redis_port from the settings (6390)")]


def _local_redis(port: int | None, data_dir: Path | None = None) -> Any:
    from cascade.local_redis import LocalRedis

    return LocalRedis(port=port or load_service_settings().redis_port, data_dir=data_dir)


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


@cache_app.command("forget")
@clear_errors
def cache_forget(tenant: Annotated[str, typer.Option(help="the tenant whose cached answers go")],
                 config: ConfigOption = None) -> None:
    """Forget a tenant's cached answers (entries, held answers, markers) in every index of the configured
    cache (cache.index_name: one per embedder and schema version), as DELETE /v1/cache does for the
    caller's own tenant."""
    import redis

    from cascade.cache import cache_indexes, purge_tenant
    from cascade.local_redis import LocalRedis
    from cascade.redis_clients import connect

    settings = load_service_settings(config)
    url = settings.redis_url or LocalRedis(port=settings.redis_port).url

    async def forget() -> tuple[list[str], int]:
        client = connect(url, socket_timeout=30)
        try:
            indexes = await cache_indexes(client, settings.cache.index_name)
            return indexes, await purge_tenant(client, indexes, tenant)
        finally:
            await client.aclose()

    try:
        indexes, forgotten = asyncio.run(forget())
    except redis.ResponseError as error:
        raise ValueError(f"the cache's Redis refused the purge: {error}") from None
    except (redis.RedisError, OSError) as error:
        raise ValueError(f"the cache's Redis did not answer: {type(error).__name__}: {error}") from None
    answers = "answer" if forgotten == 1 else "answers"
    where = f"{len(indexes)} index" + ("" if len(indexes) == 1 else "es")
    where += f": {', '.join(indexes)}" if indexes else ""
    out.print(f"{forgotten} cached {answers} of tenant {tenant!r} forgotten, in {where}", markup=False)


@thresholds_app.command("run")
@clear_errors
def thresholds_run(
    target: Annotated[str, typer.Option(help="escalation_budget or quality")] = "escalation_budget",
    value: Annotated[float, typer.Option(help="max escalation rate, or min precision of accepted answers")] = 0.3,
    tier: Annotated[str, typer.Option(help="the tier whose threshold is controlled")] = "small",
    delta: Annotated[float | None, typer.Option(help=(
        "quality: hold the precision with probability 1 - delta (a confidence bound)"))] = None,
    config: ConfigOption = None,
) -> None:
    """Consume the feedback stream and keep one threshold per tenant for the tier (Ctrl-C stops)."""
    from cascade.factory import resolve_redis
    from cascade.thresholds import ControllerConfig, ThresholdController, ThresholdTarget

    settings = load_service_settings(config)
    url = resolve_redis(settings)
    target_spec = ThresholdTarget.model_validate({"kind": target, "value": value, "tier": tier, "delta": delta})
    controller = ThresholdController(url, ControllerConfig(target=target_spec, stream=settings.feedback.stream))
    err.print(f"controlling {tier} thresholds towards {target} {value} on {url}")
    try:
        asyncio.run(controller.run())
    except KeyboardInterrupt:
        err.print("stopped")


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
    data_dir: DataDirOption = None,
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

    summary = run_loadtest(url, mix=mix, concurrency=numbers(concurrency, int), rates=numbers(rate),
                           requests=requests, duration_s=duration, thresholds=numbers(thresholds) or [None],
                           out=out_dir, data_dir=data_dir or load_service_settings().data_dir, seed=seed,
                           allow_remote=allow_remote, max_tokens=max_tokens, on_run=show)
    out.print(f"wrote {out_dir}/summary.json, runs.csv, requests.csv and cost_vs_throughput.png "
              f"({len(summary['runs'])} runs)")


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
    from loadtest.plan import plan_from_summary

    measured: dict[str, Any] = orjson.loads(summary_path.read_bytes()) if summary_path else {}
    result = plan_from_summary(qps, measured, escalation_rate=escalation_rate, tier_rps=pairs(tier_rps, "--tier-rps"),
                               hourly_price=pairs(price, "--price"), utilization=utilization)
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return
    escalation = result["escalation_rate"]
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
