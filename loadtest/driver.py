"""An asyncio HTTP load driver for the router: closed loop (a fixed number of requests in flight)
or open loop (Poisson arrivals at a rate), bounded in requests and in time.

Written on asyncio and httpx rather than Locust: every response's ``routing`` object (tier, cost,
cache hit) and the gold answers are needed per request, open-loop arrivals must follow an exact
Poisson schedule independent of response times, and it runs inside the same event loop as the
rest of the tooling without gevent's monkey-patching.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from cascade.answers import exact_match, token_f1
from pipelines.datasets import QARecord

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Sample:
    """One request's outcome."""

    dataset: str
    sent_at: float
    latency_ms: float
    status: int
    tier: str
    escalated: bool
    cache_hit: bool
    degraded: bool
    cost: float
    exact_match: float | None
    f1: float | None
    batch_size: int = 0
    tier_ms: dict[str, float] | None = None
    error: str = ""


def check_target(url: str, allow_remote: bool) -> str:
    """The base URL, refusing anything but loopback unless the caller named a remote one on purpose."""
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ValueError(f"--url must be an http(s) URL, got {url!r}")
    if parsed.hostname not in LOOPBACK and not allow_remote:
        raise ValueError(f"{url} is not a loopback address; pass --allow-remote to load-test it")
    return url.rstrip("/")


def _body(record: QARecord, threshold: float | None, max_tokens: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "cascade", "prompt": record.question, "context": list(record.context)}
    if threshold is not None:
        body["routing"] = {"threshold": threshold}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


async def _send(client: httpx.AsyncClient, url: str, record: QARecord, threshold: float | None,
                max_tokens: int | None, origin: float) -> Sample:
    sent = time.perf_counter()
    try:
        response = await client.post(f"{url}/v1/completions", json=_body(record, threshold, max_tokens))
    except httpx.HTTPError as error:
        return Sample(record.dataset, sent - origin, (time.perf_counter() - sent) * 1000, 0, "", False, False,
                      False, 0.0, None, None, error=f"{type(error).__name__}: {error}")
    latency = (time.perf_counter() - sent) * 1000
    if response.status_code != 200:
        return Sample(record.dataset, sent - origin, latency, response.status_code, "", False, False, False, 0.0,
                      None, None, error=response.text[:200])
    body = response.json()
    routing, text = body["routing"], body["choices"][0]["text"]
    golds = list(record.answers)
    return Sample(record.dataset, sent - origin, latency, 200, routing["tier"], len(routing["attempts"]) > 1,
                  bool(routing["cache_hit"]), bool(routing["degraded"]), float(routing["cost"]),
                  exact_match(text, golds), token_f1(text, golds), int(routing["batch_size"]),
                  {stage[5:]: ms for stage, ms in routing["latency_ms"].items() if stage.startswith("tier:")})


async def closed_loop(url: str, records: list[QARecord], concurrency: int, duration_s: float,
                      threshold: float | None = None, max_tokens: int | None = None) -> tuple[list[Sample], float]:
    """``concurrency`` workers each send the next question as soon as their last one is answered,
    until the questions run out or ``duration_s`` passes; returns the samples and the elapsed time."""
    queue = list(reversed(records))
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0)) as client:
        origin = time.perf_counter()
        deadline = origin + duration_s

        async def worker() -> None:
            while queue and time.perf_counter() < deadline:
                samples.append(await _send(client, url, queue.pop(), threshold, max_tokens, origin))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - origin


async def open_loop(url: str, records: list[QARecord], rate: float, duration_s: float, seed: int = 0,
                    threshold: float | None = None, max_tokens: int | None = None) -> tuple[list[Sample], float]:
    """Requests at Poisson arrival times of ``rate`` per second, whatever the responses do, until the
    questions run out or ``duration_s`` passes; waits for the ones in flight."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=len(records))
    arrivals = np.cumsum(gaps)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0)) as client:
        origin = time.perf_counter()
        tasks = []
        for record, at in zip(records, arrivals, strict=True):
            if at > duration_s:
                break
            await asyncio.sleep(max(0.0, origin + at - time.perf_counter()))
            tasks.append(asyncio.create_task(_send(client, url, record, threshold, max_tokens, origin)))
        samples = list(await asyncio.gather(*tasks))
        return samples, time.perf_counter() - origin
