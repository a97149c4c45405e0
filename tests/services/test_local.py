"""The local runner as a user meets it: `cascade serve` stops cleanly on SIGTERM and leaves no Ray
process behind, Ray listens on loopback only, and a server that cannot become healthy fails fast."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.conftest import CASCADE, free_port, wait_for_http

SCRIPTED = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}


def scripted_config(path: Path, port: int, proxy: str = "python", **engine_args: object) -> Path:
    tiers = [{"name": name, "engine": {"kind": "scripted", "model": name, "engine_args": engine_args},
              "deployment": SCRIPTED} for name in ("small", "large")]
    path.write_text(yaml.safe_dump({"tiers": tiers, "server": {"port": port, "use_redis": False, "ingress": SCRIPTED,
                                                                "proxy": proxy}}))
    return path


def listening_addresses(root: psutil.Process) -> set[tuple[str, str]]:
    """(process name, address) of every listening socket in the tree below ``root``, itself included."""
    addresses = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            name, connections = process.name(), process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        addresses |= {(name, c.laddr.ip) for c in connections if c.status == psutil.CONN_LISTEN}
    return addresses


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.mark.parametrize("proxy", ["python", "haproxy"])
def test_serve_listens_on_loopback_and_stops_cleanly_on_sigterm(proxy: str, tmp_path: Path) -> None:
    """With Serve's Python proxy and with its HAProxy ingress (whose stats and metrics listeners the
    local runner moves to loopback), a completion is answered, nothing listens beyond loopback, and
    SIGTERM leaves no process behind."""
    port = free_port()
    config = scripted_config(tmp_path / "cascade.yaml", port, proxy)
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as sink:
        process = subprocess.Popen([CASCADE, "serve", "--config", str(config)], stdout=subprocess.DEVNULL,
                                   stderr=sink, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", process, timeout_s=180)
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
                "model": "cascade", "messages": [{"role": "user", "content": "Where is Paris?"}]})
            assert answer.status_code == 200 and answer.json()["routing"]["tier"] in {"small", "large"}, answer.text
            tree = psutil.Process(process.pid)
            ray_processes = tree.children(recursive=True)
            addresses = listening_addresses(tree)
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    exposed = {(name, address) for name, address in addresses if not is_loopback(address)}
    assert addresses and not exposed, f"listening beyond loopback: {exposed}"
    log = stderr.read_text()
    assert code == 0, log[-2000:]
    assert "SIGTERM received" not in log and "Traceback" not in log and "stopped" in log
    deadline = time.monotonic() + 30
    while (alive := [p for p in ray_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]):
        assert time.monotonic() < deadline, f"left behind: {[p.name() for p in alive]}"
        time.sleep(0.5)


def test_a_failing_pool_stops_serve_at_once_with_its_error(tmp_path: Path) -> None:
    """A pool whose engine cannot start fails `cascade serve` within seconds, naming the error."""
    port = free_port()
    config = tmp_path / "cascade.yaml"
    tiers = [{"name": "small", "engine": {"kind": "llamacpp", "model": str(tmp_path / "missing.gguf")},
              "deployment": SCRIPTED},
             {"name": "large", "engine": {"kind": "scripted", "model": "large"}, "deployment": SCRIPTED}]
    config.write_text(yaml.safe_dump({"tiers": tiers, "server": {"port": port, "use_redis": False,
                                                                  "ingress": SCRIPTED}}))
    started = time.monotonic()
    result = subprocess.run([CASCADE, "serve", "--config", str(config)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "missing.gguf does not exist" in " ".join(result.stderr.split())
    assert time.monotonic() - started < 150, "no waiting out the 600 s health time-out"


@pytest.mark.parametrize("status", [404, 422])
def test_wait_until_healthy_stops_at_a_client_error(status: int) -> None:
    """A health endpoint that answers 4xx (the FastAPI/Serve mismatch answered 422) is not waited out."""
    import http.server
    import threading

    from services.local import ServeStartError, wait_until_healthy

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b'{"error": "query.self: Field required"}')

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(ServeStartError, match=f"answered {status}.*query.self"):
            wait_until_healthy(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=60)
    finally:
        server.shutdown()
    assert time.monotonic() - started < 10
