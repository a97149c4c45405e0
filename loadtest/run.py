"""A load-test session: every (threshold, load level) pair in turn against one deployment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.driver import check_target, closed_loop, open_loop
from loadtest.report import Run, summarize, write_results
from loadtest.workload import parse_mix, sample_workload


def run_loadtest(url: str, *, mix: str, concurrency: Sequence[int] = (), rates: Sequence[float] = (),
                 requests: int = 100, duration_s: float = 300.0, thresholds: Sequence[float | None] = (None,),
                 out: Path, data_dir: Path | None = None, seed: int = 0, allow_remote: bool = False,
                 max_tokens: int | None = None, on_run: Callable[[dict[str, Any]], None] = lambda s: None,
                 ) -> dict[str, Any]:
    """Closed-loop levels (``concurrency``) and open-loop levels (``rates``), each with ``requests``
    questions of the mix at most and ``duration_s`` at most, for each threshold (None: the tiers'
    own policies); every threshold sees the same questions at a level, so settings compare paired.
    Writes the results to ``out`` and returns the summary."""
    if not concurrency and not rates:
        raise ValueError("give --concurrency levels, --rate levels, or both")
    if any(c < 1 for c in concurrency) or any(r <= 0 for r in rates):
        raise ValueError("concurrency levels must be >= 1 and rates > 0")
    if requests < 1 or duration_s <= 0:
        raise ValueError("--requests must be >= 1 and --duration positive")
    base = check_target(url, allow_remote)
    weights = parse_mix(mix)
    levels = [("closed", float(c)) for c in concurrency] + [("open", float(r)) for r in rates]
    runs: list[Run] = []
    for threshold, (n, (mode, level)) in ((t, lv) for t in thresholds for lv in enumerate(levels)):
        records = sample_workload(weights, requests, data_dir, seed=seed + n)  # the same questions per level
        if mode == "closed":
            samples, elapsed = asyncio.run(closed_loop(base, records, int(level), duration_s, threshold, max_tokens))
        else:
            samples, elapsed = asyncio.run(open_loop(base, records, level, duration_s, seed + n, threshold,
                                                     max_tokens))
        run = Run(mode, level, threshold, samples, elapsed)
        runs.append(run)
        on_run(summarize(run))
    meta = {"url": base, "mix": weights, "requests_per_run": requests, "duration_s": duration_s, "seed": seed,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return write_results(runs, out, meta)
