"""What the cache stores and how it is keyed: the RediSearch index's schema, an entry's exact-match tags
(tenant, scope, and the partition a lookup filters on), and the answers held for a partition never asked
before."""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import orjson

from cascade.cache.config import CacheConfig
from cascade.schemas import Query


def index_schema(index_name: str, dimensions: int, config: CacheConfig) -> dict[str, Any]:
    """The index's RediSearch schema, as RedisVL reads it (an entry's other fields, scope, question,
    answer and created, are stored, not indexed)."""
    return {
        "index": {"name": index_name, "prefix": f"{index_name}:", "storage_type": "hash"},
        "fields": [
            {"name": "tenant", "type": "tag"},
            {"name": "partition", "type": "tag"},
            {"name": "embedding", "type": "vector", "attrs": {
                "dims": dimensions, "distance_metric": "cosine", "algorithm": "hnsw", "datatype": "float32",
                "m": config.hnsw_m, "ef_construction": config.hnsw_ef_construction}},
        ],
    }


def scope_of(query: Query) -> str:
    """Hash of everything the model saw except the user's question (its place in the conversation kept:
    the turns before and after it are not the same conversation), and whether it came as a prompt or
    as chat messages."""
    messages = [m.model_dump() for m in query.messages or []]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    conversation = [m if i != last_user else {"role": "user", "question": True} for i, m in enumerate(messages)]
    material = {"conversation": conversation, "prompt": query.prompt is not None, "context": query.context,
                "params": query.params.model_dump(mode="json")}
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def tag_value(value: str) -> str:
    """A tag value safe for a RediSearch tag filter (hex digests and tenant ids)."""
    return hashlib.sha256(value.encode()).hexdigest()[:24]


SCHEMA_VERSION = 4  # part of the index name, and so of every key: an older schema's are never read with this one


def marker_key(index_name: str, tags: dict[str, str]) -> str:
    """The key that counts the entries stored in the partition of these entry tags (0: asked, none
    indexed yet; no key: never asked), under its tenant's tag (``purge``)."""
    return f"{index_name}:warm:{tags['tenant']}:{tags['partition']}"


def held_key(index_name: str, tags: dict[str, str]) -> str:
    """The hash of the answers held, by question, for the partition of these entry tags, under its
    tenant's tag (``purge``)."""
    return f"{index_name}:held:{tags['tenant']}:{tags['partition']}"


def entry_tags(query: Query, deployment: str = "") -> dict[str, str]:
    """The exact-match tags an entry carries; a lookup filters on ``partition`` (tenant and scope, in the
    deployment whose answers these are: see ``SemanticCache.deployment``)."""
    tenant, scope = tag_value(query.tenant), tag_value(scope_of(query))
    return {"tenant": tenant, "scope": scope, "partition": tag_value(f"{tenant}:{scope}:{deployment}")}


def holds_answers(server_info: dict[str, Any]) -> bool:
    """Whether a server (by its ``INFO server``) runs what holding an answer takes: ``SET … NX GET`` and
    ``EXPIRE … NX``, Redis 7 or later. A server that does not say (INFO refused) is taken to."""
    major = str(server_info.get("redis_version", "")).split(".", 1)[0]
    return not major.isdecimal() or int(major) >= 7


def question_field(question: str) -> bytes:
    """A question as the field of its held answer (UnicodeEncodeError for a lone surrogate, which no
    request can bring: the door refuses it)."""
    return question.encode()


class Hold(NamedTuple):
    """Answers to hold in one partition's held hash: its marker's key, its entry tags, and the answers'
    JSON by question."""

    marker: str
    tags: dict[str, str]
    answers: dict[bytes, str]
