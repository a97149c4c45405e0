"""Worker-process hook of the local runner: Serve's sockets on loopback.

Ray Serve 2.60 binds each replica's gRPC server to ``[::]:0``, written into
``ray/serve/_private/replica.py``, and its HAProxy configuration template binds HAProxy's stats and
metrics listeners to every interface. Every other socket of a local cluster follows Ray's loopback
setting, so ``start_ray`` installs this hook in every worker. It runs before any actor code, so the
replica and HAProxy modules import the wrapped function and the rewritten template. Keep this
module to the standard library and Ray.
"""

from __future__ import annotations

from typing import Any

ALL_INTERFACES = "[::]:"


def bind_to_loopback() -> None:
    """The worker's Serve sockets on loopback: replicas' gRPC servers and HAProxy's own listeners."""
    bind_replica_grpc_to_loopback()
    bind_haproxy_listeners_to_loopback()


def bind_haproxy_listeners_to_loopback() -> None:
    """HAProxy's stats and metrics listeners on 127.0.0.1 (its frontend follows Serve's HTTP host)."""
    from ray.serve._private import haproxy_templates

    template = haproxy_templates.HAPROXY_CONFIG_TEMPLATE
    for everywhere in ("bind :{{ config.metrics_port }}", "bind *:{{ config.stats_port }}"):
        template = template.replace(everywhere, "bind 127.0.0.1:" + everywhere.split(":", 1)[1])
    haproxy_templates.HAPROXY_CONFIG_TEMPLATE = template


def bind_replica_grpc_to_loopback() -> None:
    """Rewrite ``[::]:port`` to ``127.0.0.1:port`` for gRPC servers started in this worker."""
    from ray._common import tls_utils

    add_port = tls_utils.add_port_to_grpc_server

    def add_loopback_port(server: Any, address: str) -> int:
        if address.startswith(ALL_INTERFACES):
            address = "127.0.0.1:" + address[len(ALL_INTERFACES):]
        return int(add_port(server, address))

    tls_utils.add_port_to_grpc_server = add_loopback_port
