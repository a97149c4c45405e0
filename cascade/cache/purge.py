"""Forgetting a tenant: its cached answers (indexed and held) and its partitions' markers, in every cache
index of one configuration, each step a short Redis call (``guard`` runs each one, e.g. through the
Redis circuit breaker). It costs a search and a delete per ``PAGE`` of the tenant's entries (small: a
delete takes each entry out of the HNSW graph on Redis's one thread, before any other command), and
one SCAN pass over the whole key space per index, for its held answers and markers.

``cache_indexes`` takes every index named ``{index_name}-…-v{N}``: another configuration whose
``index_name`` starts with this one's and a dash, sharing the Redis, is purged too (name them apart).

What a purge leaves: an answer stored while it runs (a request in flight), an older schema's held
answers (their keys do not carry the tenant; they expire ``ttl_s`` after their first answer), and the
index's entry count, which then overstates, as it does after entries expire (``SemanticCache._write``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from cascade.cache.schema import held_key, marker_key, tag_value
from cascade.cache.search import reply_text, text_keys

PAGE = 100  # entries per search and delete
SCAN_COUNT = 1000  # keys per SCAN step
Guard = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


def glob_escaped(text: str) -> str:
    """``text`` matched literally by a SCAN pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def _direct(operation: Callable[[], Awaitable[Any]]) -> Any:
    return await operation()


async def cache_indexes(client: Redis, index_name: str) -> list[str]:
    """The cache indexes of the configured ``index_name``: one per embedder and schema version
    (``{index_name}-{embedder}-v{version}``)."""
    names = [reply_text(name) for name in await client.execute_command("FT._LIST")]
    return sorted(name for name in names if name.startswith(f"{index_name}-") and name.rsplit("-v", 1)[-1].isdecimal())


async def _entries(client: Redis, index: str, tenant_tag: str) -> list[str]:
    """Up to ``PAGE`` keys of the tenant's entries in ``index`` (none if the index is gone: dropped since
    it was listed, which is no Redis fault)."""
    try:
        reply = await client.execute_command("FT.SEARCH", index, f"@tenant:{{{tenant_tag}}}", "NOCONTENT",
                                             "LIMIT", 0, PAGE, "DIALECT", 2)
    except ResponseError as error:
        if "no such index" in str(error).lower() or "unknown index" in str(error).lower():
            return []
        raise
    if isinstance(reply, dict):  # RESP3
        return [reply_text(text_keys(row)["id"]) for row in text_keys(reply)["results"]]
    return [reply_text(key) for key in reply[1:]]


async def _scan(client: Redis, cursor: int, pattern: str) -> tuple[int, list[str]]:
    """One SCAN step over keys matching ``pattern``."""
    cursor, keys = await client.scan(cursor, match=pattern, count=SCAN_COUNT)
    return int(cursor), [reply_text(key) for key in keys]


async def _drop_held(client: Redis, keys: list[str]) -> int:
    """Delete held hashes; returns how many answers they held."""
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hlen(key)
        pipe.unlink(*keys)
        replies = await pipe.execute()
    return sum(int(count) for count in replies[:-1])


async def purge_tenant(client: Redis, indexes: list[str], tenant: str, guard: Guard = _direct) -> int:
    """Delete the tenant's entries, held answers and markers in these indexes; returns how many answers
    went (entries and held answers)."""
    tag = tag_value(tenant)
    forgotten = 0
    for index in indexes:
        page: list[str] = []
        while (keys := await guard(partial(_entries, client, index, tag))) and keys != page:
            forgotten += int(await guard(partial(client.unlink, *keys)))
            page = keys  # the same page again: its keys expired and are not out of the index yet
        held_prefix = held_key(index, {"tenant": tag, "partition": ""})
        marker_prefix = marker_key(index, {"tenant": tag, "partition": ""})
        pattern = f"{glob_escaped(index)}:*:{tag}:*"  # its held hashes and markers, one pass over the keys
        cursor = None
        while cursor != 0:
            cursor, found = await guard(partial(_scan, client, cursor or 0, pattern))
            if held_hashes := [key for key in found if key.startswith(held_prefix)]:
                forgotten += await guard(partial(_drop_held, client, held_hashes))
            if markers := [key for key in found if key.startswith(marker_prefix)]:
                await guard(partial(client.unlink, *markers))
    return forgotten
