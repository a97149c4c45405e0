"""Load one tier's engine and generate a few tokens, in a process of its own.

``cascade doctor`` and the tests run this as a subprocess (``python -m cli.probe``), so a crash
in a native kernel (llama.cpp, vLLM) ends the probe, not the caller, and is reported as a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

PROBE_QUESTION = "What is the capital of France?"
PROBE_CONTEXT = "Paris is the capital and largest city of France."


@dataclass(frozen=True)
class ProbeResult:
    """What the probe of one tier printed, or how it died."""

    tier: str
    ok: bool
    detail: str
    answer: dict[str, Any] | None = None


def probe_tier(tier: str, config: Path | None = None, *, max_tokens: int = 4, timeout_s: float = 300.0,
               env: dict[str, str] | None = None) -> ProbeResult:
    """Run the probe for ``tier`` in a subprocess; a signal, an error exit or a time-out is a failure."""
    command = [sys.executable, "-m", "cli.probe", "--tier", tier, "--max-tokens", str(max_tokens)]
    if config is not None:
        command += ["--config", str(config)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return ProbeResult(tier, False, f"no answer within {timeout_s:.0f} s")
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        return ProbeResult(tier, False, f"the engine process died with {name} while loading or generating"
                                        + (f": {tail}" if tail else ""))
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return ProbeResult(tier, False, lines[-1] if lines else f"exit code {result.returncode}")
    answer = orjson.loads(result.stdout.strip().splitlines()[-1])
    return ProbeResult(tier, True, f"{answer['model']} answered {answer['text']!r} "
                                   f"({answer['completion_tokens']} tokens)", answer)


async def _generate(tier: str, config: Path | None, max_tokens: int) -> dict[str, Any]:
    from cascade.factory import build_engine
    from cascade.schemas import GenerationParams, Query
    from services.settings import load_service_settings

    settings = load_service_settings(config)
    configs = {t.name: t for t in settings.tiers}
    if tier not in configs:
        raise ValueError(f"no tier {tier!r} in the configuration (tiers: {', '.join(configs)})")
    engine = build_engine(configs[tier].engine)
    await engine.start()
    try:
        [generation] = await engine.generate([Query(prompt=PROBE_QUESTION, context=[PROBE_CONTEXT],
                                                    params=GenerationParams(max_tokens=max_tokens, temperature=0.0))])
        health = engine.health()
    finally:
        await engine.close()
    return {"tier": tier, "model": configs[tier].engine.model, "text": generation.text,
            "completion_tokens": generation.completion_tokens, "health": health}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tier", required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args()
    try:
        answer = asyncio.run(_generate(args.tier, args.config, args.max_tokens))
    except Exception as error:  # one line for the caller, which reports it as the failed check
        from cascade.engines.base import PartialGenerationError

        if isinstance(error, PartialGenerationError) and isinstance(error.results[0], Exception):
            error = error.results[0]  # the probe's one query: its own error, whole
        sys.stderr.write(f"{type(error).__name__}: {error}\n")
        raise SystemExit(1) from None
    sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


if __name__ == "__main__":
    main()
