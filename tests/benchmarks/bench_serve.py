"""The router's overhead on Ray Serve: requests per second and p50/p99 latency through the full app
(ingress, batching, scripted zero-latency small and large pools, signals, policy) against a bare
Serve echo deployment, measured in the same run over HTTP at several concurrencies.

Target: at least 0.8 of the echo throughput and at most 5 ms added p50 latency.
``--direct-ingress`` runs both with ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` (HTTP served inside the
ingress replica instead of through the proxy actor).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from tests.benchmarks.cpu_accounting import Meter
from tests.conftest import free_port

QUIET = {"enable_access_log": False}  # the same for both apps: no per-request access log lines
QUESTION = {"model": "cascade", "prompt": "Which river flows through Paris?", "max_tokens": 8}


def scripted_settings() -> Any:
    from services.settings import CascadeSettings

    def tier(name: str, policy: str) -> dict[str, Any]:
        return {"name": name, "policy": policy, "engine": {"kind": "scripted", "model": f"{name}-model"},
                "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "logging_config": QUIET}}

    return CascadeSettings(tiers=[tier("small", "v1"), tier("large", "accept")], server={
        "use_redis": False,
        "ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "logging_config": QUIET}})


async def load(url: str, concurrency: int, requests: int,
               body: dict[str, Any] | Callable[[int], dict[str, Any]] = QUESTION,
               meter: Meter | None = None) -> dict[str, float]:
    """Closed loop: ``concurrency`` workers send ``requests`` POSTs of ``body`` (or of ``body(n)`` for
    the n-th request) in all, each over a keep-alive connection of its own (a client per worker: one
    shared pool's bookkeeping grows with the requests waiting on it, so at concurrency 64 the driver
    spent more CPU per request the slower the server answered, on the cores the server runs on);
    latency per request. ``meter`` reads the CPU of the timed requests only (``cpu.<role>``): not of
    making the clients (21 ms each), their first requests or closing them."""
    def body_of(n: int) -> dict[str, Any]:
        return body(n) if callable(body) else body

    latencies: list[float] = []
    errors = 0
    remaining = requests
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(limits=limits, timeout=60) for _ in range(concurrency)]

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await client.post(url, json=body_of(remaining))
            latencies.append((time.perf_counter() - started) * 1000)
            errors += response.status_code != 200

    try:
        for n, client in enumerate(clients):  # open every connection and warm the replicas
            await client.post(url, json=body_of(requests + n))
        if meter is not None:
            meter.start()
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for client in clients))
        elapsed = time.perf_counter() - started
        used = meter.stop(len(latencies)) if meter is not None else {}
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    times = np.array(latencies)
    return {"rps": len(times) / elapsed, "p50": float(np.percentile(times, 50)),
            "p99": float(np.percentile(times, 99)), "errors": errors,
            **{f"cpu.{role}": ms for role, ms in used.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--direct-ingress", action="store_true")
    args = parser.parse_args()
    if args.direct_ingress:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    from ray import serve

    from services.app import build_app
    from tests.benchmarks.echo import Echo

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(serve.deployment(name="echo", num_replicas=1, max_ongoing_requests=512,
                                   ray_actor_options={"num_cpus": 0.1}, logging_config=QUIET)(Echo).bind(),
                  name="echo", route_prefix="/echo")
        serve.run(build_app(scripted_settings()), name="cascade", route_prefix="/cascade")
        base = f"http://127.0.0.1:{port}"
        print(f"router overhead on Ray Serve {ray.__version__}, scripted zero-latency pools, "
              f"direct ingress {'on' if args.direct_ingress else 'off'}, {args.requests} requests per level")
        print(f"{'concurrency':>11} {'echo rps':>9} {'router rps':>10} {'ratio':>6} "
              f"{'echo p50':>9} {'router p50':>10} {'added p50':>9} {'echo p99':>9} {'router p99':>10}")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            echo = asyncio.run(load(f"{base}/echo", concurrency, args.requests))
            routed = asyncio.run(load(f"{base}/cascade/v1/completions", concurrency, args.requests))
            assert echo["errors"] == 0 and routed["errors"] == 0, (echo, routed)
            print(f"{concurrency:>11} {echo['rps']:>9.1f} {routed['rps']:>10.1f} {routed['rps'] / echo['rps']:>6.2f} "
                  f"{echo['p50']:>7.1f}ms {routed['p50']:>8.1f}ms {routed['p50'] - echo['p50']:>7.1f}ms "
                  f"{echo['p99']:>7.1f}ms {routed['p99']:>8.1f}ms")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
