"""What every command shares: the consoles, common options and the one-line error handling."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from cascade.config import ConfigError
from cascade.engines.base import EngineError
from cascade.errors import validation_summary
from cascade.policies import PolicyFileError
from cascade.router import AllTiersFailedError

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML settings file (env: CASCADE_*)")]
UrlOption = Annotated[str | None, typer.Option("--url", help="a running router, e.g. http://127.0.0.1:8000")]
ApiKeyOption = Annotated[str | None, typer.Option("--api-key", envvar="CASCADE_API_KEY",
                                                  help="tenant API key for --url")]
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", envvar="CASCADE_DATA_DIR",
                                                    help="evaluation data folder")]
F = TypeVar("F", bound=Callable[..., Any])


def clear_errors(command: F) -> F:
    """Turn the errors a user can cause into one line on stderr and exit code 2, not a traceback."""
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cascade.local_redis import RedisSearchMissingError
        from pipelines.datasets import DatasetError
        from services.local import ServeStartError

        try:
            return command(*args, **kwargs)
        except ValidationError as error:
            err.print(f"[red]error:[/red] {validation_summary(error, root='query')}")
        except (ConfigError, PolicyFileError, EngineError, DatasetError, AllTiersFailedError, RedisSearchMissingError,
                ServeStartError, FileNotFoundError, ValueError, TimeoutError) as error:
            err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2)
    return wrapper  # type: ignore[return-value]


def numbers(spec: str | None, kind: type = float) -> list[Any]:
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


def pairs(spec: str | None, option: str) -> dict[str, float]:
    """``name=value`` pairs, comma-separated."""
    parsed: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, _, value = part.partition("=")
        try:
            parsed[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{option} entry {part!r} must be name=number") from None
    return parsed
