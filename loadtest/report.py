"""Load-test results: one summary per run, per-request and per-run CSVs, ``summary.json`` and plots
of cost against throughput."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtest.driver import Sample


@dataclasses.dataclass(frozen=True)
class Run:
    """One load level at one threshold setting."""

    mode: str
    level: float
    threshold: float | None
    samples: list[Sample]
    elapsed_s: float

    @property
    def label(self) -> str:
        setting = "policy" if self.threshold is None else f"t={self.threshold:g}"
        unit = "c" if self.mode == "closed" else "rps"
        return f"{setting} {self.level:g}{unit}"


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def summarize(run: Run) -> dict[str, Any]:
    """Throughput, latency percentiles, errors, escalation and cache-hit rates, cost per 1,000 queries
    and quality (where gold answers exist) of one run."""
    ok = [s for s in run.samples if s.status == 200]
    latency = np.array([s.latency_ms for s in ok]) if ok else np.zeros(1)
    scored = [s for s in ok if s.exact_match is not None]
    return {
        "label": run.label, "mode": run.mode, "level": run.level, "threshold": run.threshold,
        "requests": len(run.samples), "ok": len(ok), "errors": len(run.samples) - len(ok),
        "elapsed_s": round(run.elapsed_s, 3),
        "throughput_rps": round(len(ok) / run.elapsed_s, 4) if run.elapsed_s > 0 else 0.0,
        "latency_ms": {q: round(float(np.percentile(latency, int(q[1:]))), 2) for q in ("p50", "p95", "p99")},
        "escalation_rate": _mean([float(s.escalated) for s in ok]),
        "cache_hit_rate": _mean([float(s.cache_hit) for s in ok]),
        "degraded_rate": _mean([float(s.degraded) for s in ok]),
        "cost_per_1k": round(1000 * float(np.mean([s.cost for s in ok])), 8) if ok else None,
        "exact_match": _mean([s.exact_match for s in scored if s.exact_match is not None]),
        "f1": _mean([s.f1 for s in scored if s.f1 is not None]),
        "mean_batch_size": _mean([float(s.batch_size) for s in ok if not s.cache_hit]),
    }


def per_replica_rps(runs: Sequence[Run]) -> dict[str, float]:
    """Queries per second one replica of each tier serves, from the busy time of its calls: a batched
    call of b queries taking m ms serves b queries; an escalation is a call of one."""
    busy_ms: dict[str, float] = {}
    served: dict[str, float] = {}
    for sample in (s for run in runs for s in run.samples if s.status == 200 and s.tier_ms):
        assert sample.tier_ms is not None
        for i, (tier, ms) in enumerate(sample.tier_ms.items()):
            share = max(sample.batch_size, 1) if i == 0 else 1
            busy_ms[tier] = busy_ms.get(tier, 0.0) + ms / share
            served[tier] = served.get(tier, 0.0) + 1
    return {tier: round(1000 * served[tier] / busy_ms[tier], 4) for tier in busy_ms if busy_ms[tier] > 0}


def write_results(runs: Sequence[Run], out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """``requests.csv``, ``runs.csv``, ``summary.json`` and ``cost_vs_throughput.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summarize(run) for run in runs]
    fields = [f.name for f in dataclasses.fields(Sample)]
    with (out / "requests.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", *fields])
        for run in runs:
            for sample in run.samples:
                row = dataclasses.asdict(sample)
                row["tier_ms"] = orjson.dumps(row["tier_ms"]).decode() if row["tier_ms"] else ""
                writer.writerow([run.label, *(row[f] for f in fields)])
    columns = ["label", "mode", "level", "threshold", "requests", "ok", "errors", "elapsed_s", "throughput_rps",
               "p50_ms", "p95_ms", "p99_ms", "escalation_rate", "cache_hit_rate", "cost_per_1k", "exact_match", "f1",
               "mean_batch_size"]
    with (out / "runs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for summary in summaries:
            flat = {**summary, **{f"{k}_ms": v for k, v in summary["latency_ms"].items()}}
            writer.writerow([flat[c] for c in columns])
    summary = {**meta, "runs": summaries, "per_replica_rps": per_replica_rps(runs)}
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    plot(summaries, out / "cost_vs_throughput.png")
    return summary


def plot(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """Cost per 1,000 queries against throughput, one line per threshold setting, points per load
    level; quality, where known, against cost beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    settings = sorted({s["threshold"] for s in summaries}, key=lambda t: -1.0 if t is None else t)
    for setting in settings:
        rows = sorted((s for s in summaries if s["threshold"] == setting), key=lambda s: s["level"])
        name = "policy" if setting is None else f"threshold {setting:g}"
        xs = [s["throughput_rps"] for s in rows]
        ys = [s["cost_per_1k"] or 0.0 for s in rows]
        left.plot(xs, ys, marker="o", label=name)
        for s, x, y in zip(rows, xs, ys, strict=True):
            left.annotate(f"{s['level']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        quality = [(s["cost_per_1k"] or 0.0, s["f1"]) for s in rows if s["f1"] is not None]
        if quality:
            right.scatter(*zip(*quality, strict=True), label=name)
    left.set_xlabel("throughput (requests/s)")
    left.set_ylabel("model cost per 1,000 queries ($)")
    left.set_title("cost against throughput (labels: load level)")
    right.set_xlabel("model cost per 1,000 queries ($)")
    right.set_ylabel("token F1")
    right.set_title("quality against cost")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
