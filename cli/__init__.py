"""The ``cascade`` command: thin commands over every layer. This is the one registry of commands."""

from __future__ import annotations

import typer

from cli import doctor, operations, quality, serving

app = typer.Typer(help="cascade: answer with a small model, escalate to a large one only when needed.",
                  no_args_is_help=True, add_completion=False)

for command in (serving.ask, serving.serve, serving.demo, quality.calibrate, quality.fit, quality.evaluate,
                quality.study, quality.routerbench, operations.loadtest, operations.plan, doctor.doctor):
    app.command()(command)
app.add_typer(operations.redis_app, name="redis")
app.add_typer(operations.thresholds_app, name="thresholds")
app.add_typer(operations.cache_app, name="cache")


def main() -> None:
    """Entry point for ``python -m cli``."""
    app()
