"""Serving commands: ask one question, serve the API, run the demo."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from cascade.schemas import Query, RoutedAnswer
from cli.common import ApiKeyOption, ConfigOption, DataDirOption, UrlOption, clear_errors, err, out
from services.settings import load_service_settings


async def _route(settings_path: Path | None, queries: list[Query]) -> list[RoutedAnswer]:
    from cascade.factory import build_router
    from cascade.telemetry import configure_from_env

    configure_from_env()
    router = build_router(load_service_settings(settings_path), with_redis=True)
    await router.start()
    try:
        return await router.route(queries)
    finally:
        await router.close()


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

    settings = load_service_settings(config)
    query = Query(prompt=question, context=context, params=settings.generation)
    [answer] = asyncio.run(_route(config, [query]))
    return {"answer": answer.answer, **routing_object(answer)}


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
    import time

    import yaml

    from services.app import rayservice_patch, serve_config
    from services.local import serve_locally, sigterm_as_interrupt, stop_locally

    settings = load_service_settings(config)
    if print_config:
        if config_format not in {"serve", "rayservice-patch"}:
            raise ValueError(f"--format {config_format!r}: choose serve or rayservice-patch")
        if config_format == "serve":
            sys.stdout.write(yaml.safe_dump(serve_config(settings, host=host or "0.0.0.0"), sort_keys=False))
            return
        sys.stdout.write(f"# generated by: cascade serve --print-config --format rayservice-patch"
                         f"{f' --config {config}' if config else ''}\n{rayservice_patch(settings)}")
        return
    err.print("starting Ray, the model pools and the router …")
    with sigterm_as_interrupt():
        try:
            url = serve_locally(settings, host=host, port=port)
            err.print(f"cascade is serving at {url} (OpenAI API at {url}/v1, health at {url}/healthz); "
                      "Ctrl-C or SIGTERM stops it")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            err.print("stopping …")
        finally:
            logs = stop_locally()
    err.print(f"stopped{f' (the replicas logged to {logs})' if logs else ''}")


@clear_errors
def demo(
    n: Annotated[int, typer.Option("--n", min=1, help="questions from the SQuAD 2.0 subset")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print only the summary, as one JSON object")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="questions in flight at once")] = 8,
) -> None:
    """Send n SQuAD 2.0 questions through the router's HTTP API (starting it unless --url is given);
    compare small-only, large-only and routed exact match and cost."""
    from rich.progress import Progress

    from pipelines.datasets import load_squad
    from pipelines.demo import DemoFailedError, run_demo, summarize
    from pipelines.metrics import exact_match

    settings = load_service_settings(config)
    records = load_squad(data_dir or settings.data_dir, limit=n)
    if url is None:
        from services.local import serve_locally, stop_locally

        err.print("starting Ray, the model pools and the router (the semantic cache stays off for the demo) …")
        stop: Callable[[], object] = stop_locally
        try:
            url = serve_locally(settings.model_copy(update={"cache": settings.cache.model_copy(
                update={"enabled": False})}), quiet=True)
        except BaseException:
            stop_locally()
            raise
    else:
        def stop() -> None:
            return None
    try:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("routing", total=len(records))
            rows = asyncio.run(run_demo(url, records, api_key=api_key, concurrency=concurrency,
                                        on_progress=lambda done: progress.update(task, completed=done)))
    except DemoFailedError as error:
        raise ValueError(str(error)) from None
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
