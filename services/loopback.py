"""Worker-process hook of the local runner: Serve replicas' inter-deployment gRPC servers on loopback.

Ray Serve 2.60 binds each replica's gRPC server to ``[::]:0``, written into
``ray/serve/_private/replica.py``. Every other socket of a local cluster follows Ray's loopback
setting, so ``start_ray`` installs this hook in every worker. It runs before any actor code, so the
replica module imports the wrapped function. Keep this module to the standard library and Ray.
"""

from __future__ import annotations

from typing import Any

ALL_INTERFACES = "[::]:"


def bind_replica_grpc_to_loopback() -> None:
    """Rewrite ``[::]:port`` to ``127.0.0.1:port`` for gRPC servers started in this worker."""
    from ray._common import tls_utils

    add_port = tls_utils.add_port_to_grpc_server

    def add_loopback_port(server: Any, address: str) -> int:
        if address.startswith(ALL_INTERFACES):
            address = "127.0.0.1:" + address[len(ALL_INTERFACES):]
        return int(add_port(server, address))

    tls_utils.add_port_to_grpc_server = add_loopback_port
