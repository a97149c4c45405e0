"""Run the app on a local Ray: what ``cascade serve`` and ``cascade demo`` do on one machine."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from cascade.factory import resolve_redis
from services.settings import CascadeSettings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A one-machine cluster: Ray binds every socket (GCS, raylet, workers, agents) to loopback. Ray reads
# this when it is imported, so it is set here, before anything below imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Serve replicas inherit the driver's runtime env, so their gRPC servers follow (services/loopback.py).
LOOPBACK_WORKERS = {"worker_process_setup_hook": "services.loopback.bind_to_loopback"}


def local_settings(settings: CascadeSettings) -> CascadeSettings:
    """Settings with the Redis URL resolved (a local Redis started when none is configured or answers),
    so that every replica connects to the same one."""
    if settings.server.use_redis and settings.redis_url is None:
        return settings.model_copy(update={"redis_url": resolve_redis(settings)})
    return settings


def start_ray(num_cpus: int | None = None, *, quiet: bool = False, proxy: str = "haproxy") -> None:
    """Local Ray on loopback, without the dashboard or usage reporting, unless one is already connected;
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` in the environment lets it listen on the node's address.
    ``proxy`` is what Serve will put in front of the apps: its HAProxy ingress, or its Python proxy;
    Serve's controller reads the choice from the environment Ray starts it with."""
    import ray

    workers = LOOPBACK_WORKERS if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" else None
    if not ray.is_initialized():
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if proxy == "haproxy" else "0"
        keep_python_signal_handlers(lambda: ray.init(
            num_cpus=num_cpus or max(2, os.cpu_count() or 2), include_dashboard=False,
            log_to_driver=not quiet, configure_logging=not quiet, runtime_env=workers))


def serve_locally(settings: CascadeSettings, *, host: str | None = None, port: int | None = None,
                  quiet: bool = False, timeout_s: float = 600.0) -> str:
    """Start local Ray, Serve's HTTP proxy and the app; returns the base URL once /healthz answers."""
    from ray import serve

    from services.app import APP_NAME, build_app

    host = host or settings.server.host
    port = port or settings.server.port
    start_ray(quiet=quiet, proxy=settings.server.proxy)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build_app(local_settings(settings)), name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as error:  # Serve says which deployment failed; its replica's error says why
        raise ServeStartError(f"{error} {failed_deployments() or ''}".strip()) from None
    url = f"http://{host}:{port}"
    wait_until_healthy(url, timeout_s)
    return url


class ServeStartError(RuntimeError):
    """The app cannot become healthy: its health check refused, or a deployment failed."""


def wait_until_healthy(url: str, timeout_s: float) -> None:
    """Poll ``/healthz`` until it answers 200. A 4xx answer (the app itself refuses) or a deployment
    that Serve reports as failed (a replica died, a constructor raised) stops the wait at once with
    that answer or error, instead of waiting out the time-out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/healthz", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:500]}"
            if 400 <= response.status_code < 500:
                raise ServeStartError(f"{url}/healthz answered {last}")
        except httpx.HTTPError as error:
            last = str(error)
        failure = failed_deployments()
        if failure:
            raise ServeStartError(f"the app failed to start: {failure}")
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become healthy within {timeout_s:.0f} s: {last}")


def failed_deployments() -> str | None:
    """What Serve says about deployments that failed or went unhealthy, if any."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return None
    try:
        applications = serve.status().applications
    except Exception:  # the controller is not up yet: nothing has failed
        return None
    problems = [f"{name}: {deployment.status.value}: {root_cause(deployment.message)}"
                for app in applications.values() for name, deployment in app.deployments.items()
                if deployment.status.value in {"DEPLOY_FAILED", "UNHEALTHY"}]
    return "; ".join(problems) or None


def root_cause(message: str) -> str:
    """The innermost ``SomeError: text`` line of a replica's error (Serve wraps the traceback)."""
    causes = [line.strip() for line in message.splitlines()
              if re.match(r"^\s*[\w.]+(Error|Exception|Exit): ", line) and "Traceback" not in line]
    return causes[-1] if causes else message.strip().splitlines()[0][:500] if message.strip() else "no message"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM stops the process the way Ctrl-C does (KeyboardInterrupt)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def keep_python_signal_handlers(start: Callable[[], object]) -> None:
    """Run ``start`` (``ray.init``), then give SIGINT and SIGTERM back to Python: Ray installs a
    fatal-signal handler over them that prints a stack trace for a plain stop request, and replaces
    a handler the caller had installed. A handler installed before is restored, otherwise Ray's own
    Python handler (which shuts Ray down on exit) stays."""
    if threading.current_thread() is not threading.main_thread():
        start()
        return
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    start()
    for signum, handler in before.items():
        ours = callable(handler) and handler is not signal.default_int_handler
        signal.signal(signum, handler if ours else signal.getsignal(signum))


def stop_locally() -> str | None:
    """Delete the app (its replicas stop cleanly, flushing buffered feedback), then shut Ray down;
    returns the folder of Ray's logs of this run, if Ray was running."""
    import ray
    from ray import serve

    from services.app import APP_NAME

    if not ray.is_initialized():
        return None
    logs = stop_forwarding_worker_logs()
    serve.delete(APP_NAME)
    ray.shutdown()
    return logs


def stop_forwarding_worker_logs() -> str | None:
    """Stop copying the replicas' output to this terminal; returns the folder that keeps all of it.
    Serve stops the replicas of every deployment at once, so a router replica can log a traceback
    for a queue-length probe cancelled by a pool replica stopping first (Ray 2.60): not an error
    of the app, and not something a user stopping the server should read as a crash."""
    from ray._private import worker

    worker.global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    node = worker._global_node
    return os.path.join(node.get_session_dir_path(), "logs") if node is not None else None
