"""Serving overhead with remote (``openai``) tiers: the router on Ray Serve in front of an
OpenAI-compatible backend that answers at once (``tests/benchmarks/openai_echo.py``), against the
backend called directly and a bare Serve echo deployment, in one run, at several concurrencies.

Each cascade row is the app ``cascade serve`` runs (cache, queue and Redis off), with both tiers
placed in the ingress (the default for remote engines) or in pool deployments of their own, and
the small tier's answers all accepted (0% escalated) or all escalated (100%). Targets: cascade at
0% ≥ 0.9× the Serve echo's req/s and p50 within +3 ms of it at concurrency 1; ≥ 0.2× the direct
backend's req/s at 16 and 64; escalating every query ≤ 1.5× the 0% p50 at concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from typing import Any

from tests.benchmarks.bench_serve import QUIET, load
from tests.conftest import free_port, wait_for_http

CHAT = {"model": "cascade", "messages": [{"role": "user", "content": "Which river flows through Paris?"}],
        "max_tokens": 8}
BACKEND_CHAT = {**CHAT, "model": "small", "logprobs": True, "top_logprobs": 5}
REPLICA: dict[str, Any] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "logging_config": QUIET}


def cascade_settings(backend: str, *, placement: str, escalate: bool) -> Any:
    from services.settings import CascadeSettings

    def tier(name: str, model: str, policy: str) -> dict[str, Any]:
        return {"name": name, "policy": policy, "placement": placement, "deployment": REPLICA,
                "engine": {"kind": "openai", "model": model, "base_url": f"{backend}/v1", "max_retries": 0}}

    small = "small-unsure" if escalate else "small"
    return CascadeSettings(tiers=[tier("small", small, "v1"), tier("large", "large", "accept")], server={
        "use_redis": False, "batch_wait_timeout_s": 0.002, "max_batch_size": 32, "max_concurrent_batches": 8,
        "ingress": REPLICA})


def row(name: str, figures: dict[str, float], reference: dict[str, float] | None = None) -> str:
    ratio = f"{figures['rps'] / reference['rps']:>6.2f}" if reference else f"{'':>6}"
    added = f"{figures['p50'] - reference['p50']:>+8.1f}ms" if reference else f"{'':>10}"
    return (f"{name:<34} {figures['rps']:>8.1f} {ratio} {figures['p50']:>7.1f}ms {added} "
            f"{figures['p99']:>7.1f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests", type=int, default=400,
                        help="requests per row and level (at least 16 per worker)")
    parser.add_argument("--placements", default="ingress,pool")
    parser.add_argument("--direct-ingress", action="store_true",
                        help="RAY_SERVE_ENABLE_DIRECT_INGRESS=1: HTTP served in the ingress replica, not the proxy")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.direct_ingress:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"

    import ray
    from ray import serve

    from services.app import APP_NAME, build_app
    from services.local import start_ray
    from tests.benchmarks.echo import Echo

    def requests(concurrency: int) -> int:
        return max(args.requests, 16 * concurrency)

    backend_port = free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    backend = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.openai_echo", "--port", str(backend_port)])
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        wait_for_http(f"{backend_url}/v1/models", backend, timeout_s=60)
        results["direct to backend"] = {c: asyncio.run(load(f"{backend_url}/v1/chat/completions", c,
                                                            requests(c), BACKEND_CHAT)) for c in levels}
        port = free_port()
        start_ray(quiet=True)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        serve.run(serve.deployment(name="echo", max_ongoing_requests=512, **REPLICA)(Echo).bind(),
                  name="echo", route_prefix="/echo")
        results["bare Serve echo"] = {c: asyncio.run(load(f"{base}/echo", c, requests(c), CHAT)) for c in levels}
        serve.delete("echo")
        for placement in args.placements.split(","):
            for escalate in (False, True):
                serve.run(build_app(cascade_settings(backend_url, placement=placement, escalate=escalate)),
                          name=APP_NAME, route_prefix="/")
                url = f"{base}/v1/chat/completions"
                name = f"cascade, tiers in {placement}, {'100' if escalate else '0'}% escalated"
                results[name] = {c: asyncio.run(load(url, c, requests(c), CHAT)) for c in levels}
                serve.delete(APP_NAME)
        print(f"serving overhead, openai tiers against a local echo backend, Ray {ray.__version__}, "
              f"{os.cpu_count()} CPUs, direct ingress {'on' if args.direct_ingress else 'off'}, "
              f"{args.requests} requests per row and level (16 per worker at least); ratio and added p50 "
              "against the bare Serve echo")
        for concurrency in levels:
            echo = results["bare Serve echo"][concurrency]
            print(f"\nconcurrency {concurrency}\n{'':<34} {'req/s':>8} {'ratio':>6} {'p50':>9} {'added p50':>10} "
                  f"{'p99':>9}")
            for name, by_level in results.items():
                figures = by_level[concurrency]
                assert figures["errors"] == 0, (name, concurrency, figures)
                print(row(name, figures, None if name in {"bare Serve echo", "direct to backend"} else echo))
            direct = results["direct to backend"][concurrency]["rps"]
            for name, by_level in results.items():
                if name.startswith("cascade"):
                    print(f"  {name}: {by_level[concurrency]['rps'] / direct:.2f}× direct-to-backend req/s")
        for placement in args.placements.split(","):
            zero = results[f"cascade, tiers in {placement}, 0% escalated"][levels[0]]["p50"]
            full = results[f"cascade, tiers in {placement}, 100% escalated"][levels[0]]["p50"]
            print(f"escalation cost, tiers in {placement}, concurrency {levels[0]}: p50 {full:.1f} / {zero:.1f} ms "
                  f"= {full / zero:.2f}×")
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        backend.terminate()
        backend.wait(timeout=30)


if __name__ == "__main__":
    main()
