"""Run the app on a local Ray: what ``cascade serve`` and ``cascade demo`` do on one machine."""

from __future__ import annotations

import os
import time

import httpx

from cascade.config import CascadeSettings
from cascade.factory import resolve_redis


def local_settings(settings: CascadeSettings) -> CascadeSettings:
    """Settings with the Redis URL resolved (a local Redis started when none is configured or answers),
    so that every replica connects to the same one."""
    if settings.server.use_redis and settings.redis_url is None:
        return settings.model_copy(update={"redis_url": resolve_redis(settings)})
    return settings


def start_ray(num_cpus: int | None = None, *, quiet: bool = False) -> None:
    """Local Ray without the dashboard or usage reporting, unless one is already connected."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus or max(2, os.cpu_count() or 2), include_dashboard=False,
                 log_to_driver=not quiet, configure_logging=not quiet)


def serve_locally(settings: CascadeSettings, *, host: str | None = None, port: int | None = None,
                  quiet: bool = False, timeout_s: float = 600.0) -> str:
    """Start local Ray, Serve's HTTP proxy and the app; returns the base URL once /healthz answers."""
    from ray import serve

    from services.app import APP_NAME, build_app

    host = host or settings.server.host
    port = port or settings.server.port
    start_ray(quiet=quiet)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(local_settings(settings)), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    wait_until_healthy(url, timeout_s)
    return url


def wait_until_healthy(url: str, timeout_s: float) -> None:
    """Poll ``/healthz`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/healthz", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as error:
            last = str(error)
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become healthy within {timeout_s:.0f} s: {last}")


def stop_locally() -> None:
    """Delete the app (its replicas stop cleanly, flushing buffered feedback), then shut Ray down."""
    import ray
    from ray import serve

    from services.app import APP_NAME

    serve.delete(APP_NAME)
    ray.shutdown()
