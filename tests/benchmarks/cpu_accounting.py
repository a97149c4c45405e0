"""Where a benchmark's CPU goes, per request: the CPU seconds each process of the serving path used
while a row ran (``/proc/<pid>/stat``), divided by the requests it served. On two cores shared by the
load driver, Serve's proxy, the replicas and the backend, this is what says which process a
throughput ratio is spent in (a sampling profile says which function, within one process)."""

from __future__ import annotations

import os
import re
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
REPLICA = re.compile(r"^ray::ServeReplica:([^:]+):")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_seconds() -> float:
    """CPU time spent by the whole machine (every core, idle excluded)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]  # user nice system idle iowait irq ...
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def serve_processes() -> dict[str, list[int]]:
    """The Serve proxy (its Python actor and, with the HAProxy ingress, HAProxy) and each application's
    replicas by role: "proxy", or the application's name."""
    roles: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="ignore")
        except OSError:
            continue
        if title.startswith("ray::ProxyActor") or Path(title).name == "haproxy":
            roles.setdefault("proxy", []).append(int(entry.name))
        elif match := REPLICA.match(title):
            roles.setdefault(match.group(1), []).append(int(entry.name))
    return roles


class Meter:
    """CPU seconds by role between ``start`` and ``stop``: the driver (this process), the backend, the
    proxy, one Serve application's replicas, Redis (if ``redis_pid``), and everything else on the machine."""

    def __init__(self, backend_pid: int, app: str | None, redis_pid: int | None = None) -> None:
        processes = serve_processes()
        self.pids = {"driver": [os.getpid()], "backend": [backend_pid], "proxy": processes.get("proxy", []),
                     "replicas": processes.get(app, []) if app else []}
        if redis_pid is not None:
            self.pids["redis"] = [redis_pid]

    def _read(self) -> dict[str, float]:
        readings = {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.pids.items()}
        readings["machine"] = machine_seconds()
        return readings

    def start(self) -> None:
        self._started = self._read()

    def stop(self, requests: int) -> dict[str, float]:
        """Milliseconds of CPU per request by role, "other" being the rest of the machine."""
        ended = self._read()
        used = {role: (ended[role] - self._started[role]) * 1000 / requests for role in ended}
        machine = used.pop("machine")
        used["other"] = max(machine - sum(used.values()), 0.0)
        return used
