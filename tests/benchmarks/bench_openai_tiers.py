"""Serving overhead with remote (``openai``) tiers: the router on Ray Serve in front of an
OpenAI-compatible backend that answers at once (``tests/benchmarks/openai_echo.py``), against the
backend called directly, a bare Serve echo deployment and a bare Serve deployment that calls the
backend once per request (the least any Serve router of a remote model does), in one run, at
several concurrencies. Rows are compared by their medians over trials and, where the comparison is
a target's, also trial by trial (each cascade trial against the baseline's trial of the same repeat).

Each cascade row is the app ``cascade serve`` runs (cache, queue and Redis off), with both tiers
placed in the ingress (the default for remote engines) or in pool deployments of their own, and
the small tier's answers all accepted (0% escalated) or all escalated (100%). With ``--cache``, a row
turns the feedback log on (a local Redis, cache off: what the cache rows add to a deployment that logs
its decisions anyway), and three more turn the semantic cache on too, with every request a miss:
each request in a scope of its own (a cold cache: no embedding at all, each answer held by its
question), the same with ``hold_new_partitions: false`` (no embedding before the answer, the store
embeds and indexes it afterwards; not a target's row: what holding saves), and every request a new
question in one scope that has entries (embedded on the request path); then Redis is frozen
(SIGSTOP) and the cached app is measured against the app without Redis (the fault-isolation issue:
within 10% of its p50). Before that, the run checks that
the cache rows measured the cache: how many searches Redis ran for the warm-scope requests, and what
the cached app's Redis circuit breaker saw. The CPU table per row splits the machine's CPU over the
timed requests into the load driver, the proxy (Serve's Python proxy and HAProxy), the app's
replicas, the backend, Redis and the rest.

Targets: cascade at 0% ≥ 0.9× the Serve echo's req/s and p50 within +3 ms of it at concurrency 1;
≥ 0.2× the direct backend's req/s at 16 and 64; escalating every query ≤ 1.5× the 0% p50 at
concurrency 1; cache on ≥ 0.8× cache off at 16 and 64 and p50 within +3 ms at 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.benchmarks.bench_serve import QUIET, load
from tests.benchmarks.cpu_accounting import Meter
from tests.conftest import free_port, wait_for_http

CHAT: dict[str, Any] = {
    "model": "cascade", "messages": [{"role": "user", "content": "Which river flows through Paris?"}], "max_tokens": 8}
BACKEND_CHAT = {**CHAT, "model": "small", "logprobs": True, "top_logprobs": 5}
REPLICA: dict[str, Any] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "logging_config": QUIET}


NUMBERS = itertools.count()


def new_scope(n: int) -> dict[str, Any]:
    """The same question under a system prompt of its own: a scope with no entries."""
    return {**CHAT, "messages": [{"role": "system", "content": f"Session {next(NUMBERS)}."}, *CHAT["messages"]]}


def new_question(n: int) -> dict[str, Any]:
    """A question never asked before, in the one scope all of them share."""
    return {**CHAT, "messages": [{"role": "user", "content": f"What is the population of district {next(NUMBERS)}?"}]}


HOLD_OFF = "cache on, misses, cold scopes, hold_new_partitions: false"


def cascade_settings(backend: str, *, placement: str, escalate: bool, redis_url: str | None = None,
                     cache: bool = True, hold: bool = True, ingress_env: dict[str, str] | None = None) -> Any:
    """The app's settings; ``ingress_env``: environment variables of the ingress replica (Serve's own
    options are read from there)."""
    from services.settings import CascadeSettings

    def tier(name: str, model: str, policy: str) -> dict[str, Any]:
        return {"name": name, "policy": policy, "placement": placement, "deployment": REPLICA,
                "engine": {"kind": "openai", "model": model, "base_url": f"{backend}/v1", "max_retries": 0}}

    small = "small-unsure" if escalate else "small"
    redis: dict[str, Any] = {"redis_url": redis_url, "queue": {"enabled": False},
                             "cache": {"enabled": cache, "hold_new_partitions": hold}} if redis_url else {}
    return CascadeSettings(tiers=[tier("small", small, "v1"), tier("large", "large", "accept")], **redis, server={
        "use_redis": redis_url is not None,
        "ingress": REPLICA if not ingress_env else {**REPLICA, "ray_actor_options": {
            **REPLICA["ray_actor_options"], "runtime_env": {"env_vars": ingress_env}}}})


def row(name: str, figures: dict[str, float], reference: dict[str, float] | None = None) -> str:
    ratio = f"{figures['rps'] / reference['rps']:>6.2f}" if reference else f"{'':>6}"
    added = f"{figures['p50'] - reference['p50']:>+8.1f}ms" if reference else f"{'':>10}"
    return (f"{name:<34} {figures['rps']:>8.1f} {ratio} {figures['p50']:>7.1f}ms {added} "
            f"{figures['p99']:>7.1f}ms")


Row = tuple[str, str, dict[str, Any] | Callable[[int], dict[str, Any]]]


Trials = dict[str, dict[int, list[dict[str, float]]]]


def measure(rows: list[Row], levels: list[int], repeats: int, requests: Callable[[int], int],
            backend_pid: int | None = None, redis_pid: int | None = None) -> Trials:
    """Per row and level, the figures of ``repeats`` trials; the rows are interleaved within each
    repeat, so that drift of the machine hits all of them alike. With ``backend_pid``, each trial
    also records the CPU milliseconds per request of every process on the path (``cpu.*``)."""
    trials: Trials = {name: {} for name, _, _ in rows}
    for concurrency in levels:
        for _ in range(repeats):
            for name, url, body in rows:
                app = url.split("/")[3]  # the Serve application's route prefix; "v1" for the backend itself
                meter = Meter(backend_pid, None if app == "v1" else app, redis_pid) if backend_pid is not None else None
                figures = asyncio.run(load(url, concurrency, requests(concurrency), body, meter))
                assert figures["errors"] == 0, (name, concurrency, figures)
                trials[name].setdefault(concurrency, []).append(figures)
    return trials


def medians(trials: Trials) -> dict[str, dict[int, dict[str, float]]]:
    """Per row and level, the median of each figure over the trials."""
    return {name: {level: {key: float(np.median([f[key] for f in measured])) for key in measured[0]}
                   for level, measured in by_level.items()} for name, by_level in trials.items()}


def pairs(trials: Trials, name: str, baseline: str, level: int) -> tuple[list[float], list[float]]:
    """Per repeat, ``name``'s req/s over ``baseline``'s in the same repeat, and its p50 minus the baseline's."""
    both = list(zip(trials[name][level], trials[baseline][level], strict=True))
    return [on["rps"] / off["rps"] for on, off in both], [on["p50"] - off["p50"] for on, off in both]


def paired(trials: Trials, name: str, baseline: str, level: int) -> str:
    """``pairs``: the median over repeats, then the lowest and highest (each trial is compared with one
    run minutes, not rows, apart; the range is how far one run of the bench can be off)."""
    ratios, added = pairs(trials, name, baseline, level)
    return (f"{np.median(ratios):.2f}× req/s ({min(ratios):.2f}–{max(ratios):.2f}), "
            f"p50 {np.median(added):+.1f} ms ({min(added):+.1f} to {max(added):+.1f})")


TARGET_LEVELS = (1, 16, 64)  # the concurrencies the issues' targets name


def targets(trials: Trials, results: dict[str, dict[int, dict[str, float]]], levels: list[int]) -> None:
    """The issues' targets against this run's figures, each met, NOT met, or not measured (a level the
    run left out). Ratios to the echo and to cache off are paired medians (``pairs``); to the direct
    backend and the escalation cost, ratios of medians, as in the tables. Three decimals, so that a
    figure never looks met where it is not. Beside the echo target, the bare forwarder's own ratio: a
    Serve deployment that only calls the backend, so no router of a remote model can reach a ratio it
    does not reach on this machine."""
    zero, full = "cascade, tiers in ingress, 0% escalated", "cascade, tiers in ingress, 100% escalated"
    echo, forwarder = "bare Serve echo", "bare Serve forwarder"
    if zero not in trials:
        return

    def ratio(name: str, baseline: str, level: int) -> float:
        return float(np.median(pairs(trials, name, baseline, level)[0]))

    def added(name: str, baseline: str) -> float:
        return float(np.median(pairs(trials, name, baseline, 1)[1]))

    def judged(target: str, needed: tuple[int, ...], figure: Callable[[int], float], met: Callable[[float], bool],
               shown: str = "{:.3f}") -> str:
        left_out = [c for c in needed if c not in levels]
        if left_out:
            return f"  {target}: not measured (no run at concurrency {', '.join(map(str, left_out))})"
        values = [figure(c) for c in needed]
        return (f"  {target}: {' / '.join(shown.format(v) for v in values)}: "
                + ("met" if all(map(met, values)) else "NOT met"))

    print("\ntargets, against this run's figures:")
    line = judged("cascade at 0% ≥ 0.9× the bare echo's req/s at concurrency 1 / 16 / 64", TARGET_LEVELS,
                  lambda c: ratio(zero, echo, c), lambda v: v >= 0.9)
    measured = [c for c in TARGET_LEVELS if c in levels]
    ceiling = {c: ratio(forwarder, echo, c) for c in measured}
    beyond = [c for c in measured if ceiling[c] < 0.9]
    print(line + (f"; the bare forwarder itself: {' / '.join(f'{ceiling[c]:.3f}' for c in measured)}" if measured
                  else "") + (f"  <- out of reach here at concurrency {', '.join(map(str, beyond))} for any router "
                              "that calls the backend" if beyond else ""))
    print(judged("p50 within +3 ms of the echo at concurrency 1", (1,), lambda c: added(zero, echo),
                 lambda v: v <= 3, "{:+.2f} ms"))
    print(judged("≥ 0.2× direct-to-backend req/s at concurrency 16 / 64", (16, 64),
                 lambda c: results[zero][c]["rps"] / results["direct to backend"][c]["rps"], lambda v: v >= 0.2))
    print(judged("escalating every query ≤ 1.5× the 0% p50 at concurrency 1", (1,),
                 lambda c: results[full][c]["p50"] / results[zero][c]["p50"], lambda v: v <= 1.5, "{:.3f}×"))
    for name in [n for n in trials if n.startswith("cache on") and n != HOLD_OFF]:
        print(judged(f"{name} ≥ 0.8× cache off (no Redis) at concurrency 16 / 64", (16, 64),
                     lambda c, name=name: ratio(name, zero, c), lambda v: v >= 0.8))
        print(judged(f"{name}: p50 within +3 ms of cache off at concurrency 1", (1,),
                     lambda c, name=name: added(name, zero), lambda v: v <= 3, "{:+.2f} ms"))


def cache_health(redis: Any, healthz: str, warm_requests: int) -> None:
    """Print how many cache searches Redis ran against the warm-scope requests made, and what the cached
    app's Redis circuit breaker saw: a breaker that opened skipped the cache for a while, and the cache
    rows then measure less than they claim."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    searched = int(stats.get("cmdstat_FT.SEARCH", {"calls": 0})["calls"])
    breaker = httpx.get(healthz, timeout=10).json()["redis"]
    print(f"\ncache rows: Redis ran {searched} searches for {warm_requests} warm-scope requests (each worker's first "
          f"included; one search each unless the cache was skipped); the cached app's Redis breaker: "
          f"{breaker['failures']} faults, {breaker['skipped']} calls skipped, last error {breaker['last_error']}"
          + ("  <- the cache was off for part of the cache rows" if breaker["failures"] or searched < warm_requests
             else ""))


def outage(redis: Any, rows: list[Row], levels: list[int], repeats: int, requests: Callable[[int], int]) -> None:
    """The cached path with Redis frozen (SIGSTOP: it neither answers nor refuses) against the app
    without Redis: the breaker must keep the latency within 10%."""
    pid = redis.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        asyncio.run(load(rows[1][1], 1, 2, CHAT))  # the first call waits out the timeout and opens the circuit
        results = medians(measure(rows, levels, repeats, requests))
    finally:
        os.kill(pid, signal.SIGCONT)
    off_figures, stopped_figures = results.values()
    print("\nRedis stopped (SIGSTOP) against no Redis: " + ", ".join(
        f"concurrency {c}: p50 {stopped_figures[c]['p50']:.1f} / {off_figures[c]['p50']:.1f} ms = "
        f"{stopped_figures[c]['p50'] / off_figures[c]['p50']:.2f}×, req/s "
        f"{stopped_figures[c]['rps'] / off_figures[c]['rps']:.2f}×" for c in levels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests per row and level (at least 16 per worker)")
    parser.add_argument("--placements", default="ingress,pool")
    parser.add_argument("--repeats", type=int, default=3, help="trials per row and level; medians reported")
    parser.add_argument("--cache", action="store_true", help="add the cache-on rows (a local Redis)")
    parser.add_argument("--direct-ingress", action="store_true",
                        help="RAY_SERVE_ENABLE_DIRECT_INGRESS=1: HTTP served in the ingress replica, not the proxy")
    parser.add_argument("--ingress-env", action="append", default=[], metavar="NAME=VALUE",
                        help="add a row: cascade at 0%% with tiers in the ingress, its ingress replica run with this "
                             "environment variable (a Serve option to try, e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1), "
                             "compared trial by trial with the same app without it; repeatable")
    parser.add_argument("--ha-proxy", action="store_true",
                        help="Serve's HAProxy ingress in front of every app (server.proxy: haproxy, the default of "
                             "cascade serve) instead of its Python proxy")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if any("=" not in item for item in args.ingress_env):
        parser.error("--ingress-env takes NAME=VALUE")
    if args.ingress_env and "ingress" not in args.placements.split(","):
        parser.error("--ingress-env compares with the ingress placement: keep 'ingress' in --placements")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.direct_ingress:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"

    import ray
    from ray import serve

    from cascade.local_redis import LocalRedis
    from services.app import build_app
    from services.local import start_ray
    from tests.benchmarks.echo import Echo, Forwarder

    def requests(concurrency: int) -> int:
        return max(args.requests, 16 * concurrency)

    backend_port = free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    backend = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.openai_echo", "--port", str(backend_port)])
    redis: LocalRedis | None = None
    try:
        wait_for_http(f"{backend_url}/v1/models", backend, timeout_s=60)
        port = free_port()
        start_ray(quiet=True, proxy="haproxy" if args.ha_proxy else "python")
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        serve.run(serve.deployment(name="echo", max_ongoing_requests=512, **REPLICA)(Echo).bind(),
                  name="echo", route_prefix="/echo")
        serve.run(serve.deployment(name="forwarder", max_ongoing_requests=512, **REPLICA)(Forwarder).bind(
            f"{backend_url}/v1/chat/completions", BACKEND_CHAT), name="forwarder", route_prefix="/forwarder")
        apps = {f"{placement}-{share}": (f"cascade, tiers in {placement}, {share}% escalated",
                                         cascade_settings(backend_url, placement=placement, escalate=share == 100))
                for placement in args.placements.split(",") for share in (0, 100)}
        ingress_env = dict(item.split("=", 1) for item in args.ingress_env)
        if ingress_env:
            apps["ingress-0-env"] = (f"cascade, ingress with {' '.join(args.ingress_env)}", cascade_settings(
                backend_url, placement="ingress", escalate=False, ingress_env=ingress_env))
        if args.cache:
            redis = LocalRedis(port=free_port(), state_dir=Path(tempfile.mkdtemp(prefix="bench-redis-")))
            apps["cached"] = ("cache on", cascade_settings(backend_url, placement="ingress", escalate=False,
                                                           redis_url=redis.start()))
            apps["unheld"] = (HOLD_OFF, cascade_settings(backend_url, placement="ingress", escalate=False,
                                                         redis_url=redis.url, hold=False))
            apps["logged"] = ("cache off, feedback log on", cascade_settings(
                backend_url, placement="ingress", escalate=False, redis_url=redis.url, cache=False))
        for prefix, (_, settings) in apps.items():  # side by side, so that every row sees the same machine
            serve.run(build_app(settings), name=prefix, route_prefix=f"/{prefix}")
        rows: list[Row] = [
            ("direct to backend", f"{backend_url}/v1/chat/completions", BACKEND_CHAT),
            ("bare Serve echo", f"{base}/echo", CHAT),
            ("bare Serve forwarder", f"{base}/forwarder", CHAT)]
        rows += [(name, f"{base}/{prefix}/v1/chat/completions", CHAT) for prefix, (name, _) in apps.items()
                 if prefix not in {"cached", "unheld"}]
        if args.cache:
            cached_url = f"{base}/cached/v1/chat/completions"
            for _ in range(3):  # the warm scope: an answer held, then indexed with the next one, then searched
                httpx.post(cached_url, json=new_question(0), timeout=30).raise_for_status()
                time.sleep(1.5)  # the recorder's wait and the replica's marker memo (1 s) passed
            rows += [("cache on, misses, cold scopes", cached_url, new_scope),
                     (HOLD_OFF, f"{base}/unheld/v1/chat/completions", new_scope),
                     ("cache on, misses, warm scope", cached_url, new_question)]
        trials = measure(rows, levels, args.repeats, requests, backend.pid, redis.pid() if redis is not None else None)
        results = medians(trials)
        print(f"serving overhead, openai tiers against a local echo backend, Ray {ray.__version__}, "
              f"{os.cpu_count()} CPUs, direct ingress {'on' if args.direct_ingress else 'off'}, "
              f"HAProxy {'on' if args.ha_proxy else 'off'}, "
              f"median of {args.repeats} interleaved trials of {args.requests} requests (16 per worker at least) "
              "per row and level; ratio and added p50 against the bare Serve echo")
        for concurrency in levels:
            echo = results["bare Serve echo"][concurrency]
            print(f"\nconcurrency {concurrency}\n{'':<34} {'req/s':>8} {'ratio':>6} {'p50':>9} {'added p50':>10} "
                  f"{'p99':>9}")
            for name, by_level in results.items():
                figures = by_level[concurrency]
                print(row(name, figures, None if name in {"bare Serve echo", "direct to backend"} else echo))
            roles = ("driver", "proxy", "replicas", "backend", *(("redis",) if redis is not None else ()), "other")
            print(f"  {'CPU ms per request':<40} " + " ".join(f"{role:>8}" for role in roles) + f" {'total':>8}")
            for name, by_level in results.items():
                cpu = {k.removeprefix("cpu."): v for k, v in by_level[concurrency].items() if k.startswith("cpu.")}
                if cpu:
                    print(f"  {name[:40]:<40} " + " ".join(f"{cpu[role]:>8.2f}" for role in roles)
                          + f" {sum(cpu.values()):>8.2f}")
            direct = results["direct to backend"][concurrency]["rps"]
            for name, by_level in results.items():
                if name.startswith("cascade"):
                    echoed, forwarded = (paired(trials, name, f"bare Serve {bare}", concurrency)
                                         for bare in ("echo", "forwarder"))
                    print(f"  {name}: {by_level[concurrency]['rps'] / direct:.2f}× direct-to-backend req/s; "
                          f"in the same trial, against the echo: {echoed}; against the forwarder: {forwarded}")
        for placement in args.placements.split(","):
            zero = results[f"cascade, tiers in {placement}, 0% escalated"][levels[0]]["p50"]
            full = results[f"cascade, tiers in {placement}, 100% escalated"][levels[0]]["p50"]
            print(f"escalation cost, tiers in {placement}, concurrency {levels[0]}: p50 {full:.1f} / {zero:.1f} ms "
                  f"= {full / zero:.2f}×")
        if ingress_env:
            name = apps["ingress-0-env"][0]
            print(f"{name} against the same app without it, paired trials: " + "; ".join(
                f"concurrency {c}: {paired(trials, name, 'cascade, tiers in ingress, 0% escalated', c)}"
                for c in levels))
        baselines = {"cascade, tiers in ingress, 0% escalated": "cache off (no Redis)",
                     "cache off, feedback log on": "cache off, feedback log on"}
        for name in [n for n in trials if n.startswith("cache on")]:
            for baseline, label in baselines.items():
                if baseline in trials:
                    print(f"{name} against {label}, paired trials: " + "; ".join(
                        f"concurrency {c}: {paired(trials, name, baseline, c)}" for c in levels))
        if redis is not None:
            cache_health(redis, f"{base}/cached/healthz", args.repeats * sum(requests(c) + c for c in levels))
            outage(redis, [("cache off", f"{base}/ingress-0/v1/chat/completions", CHAT),
                           ("cache on, Redis stopped", f"{base}/cached/v1/chat/completions", CHAT)],
                   levels, args.repeats, requests)
        if "ingress" in args.placements.split(","):
            targets(trials, results, levels)
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        if redis is not None:
            redis.stop()
        backend.terminate()
        backend.wait(timeout=30)


if __name__ == "__main__":
    main()
