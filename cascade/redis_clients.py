"""The asyncio Redis clients of the cache, the feedback log, the live thresholds and the rate limits.

redis-py's synchronous connections pack commands with hiredis's C packer when hiredis is installed;
its asyncio connections always pack in Python (about 10 µs more per command here, for the cache's
1 KB vectors and 700-byte answers). The clients made here pack with the synchronous side's own
``HiredisRespSerializer``, on a connection of the class the URL asks for (TCP, TLS or a Unix socket).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.connection import HIREDIS_AVAILABLE, HiredisRespSerializer


class _HiredisPacking:
    """Packs commands with hiredis (mixed in before an asyncio connection class)."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)


class PackedConnection(_HiredisPacking, Connection):
    """TCP."""


class PackedSSLConnection(_HiredisPacking, SSLConnection):
    """TLS (``rediss://``)."""


class PackedUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    """A Unix socket (``unix://``)."""


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: PackedConnection, SSLConnection: PackedSSLConnection,
    UnixDomainSocketConnection: PackedUnixConnection}


def connect(url: str, **options: Any) -> Redis:
    """``Redis.from_url(url, **options)``, packing commands in C when hiredis is installed."""
    settings: dict[str, Any] = {**options, **parse_url(url)}  # as ``ConnectionPool.from_url``: the URL wins
    if HIREDIS_AVAILABLE:
        chosen = settings.get("connection_class", Connection)
        settings["connection_class"] = _PACKED.get(chosen, chosen)
    return Redis.from_pool(ConnectionPool(**settings))
