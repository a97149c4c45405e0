"""What a search sends and reads back: its strategy for a partition (``hybrid_policy``), the FT.SEARCH
written out (``search_command``), which rows can be searched (``blank_rows``), and the near entries of
its reply (``candidates``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from cascade.cache.config import CacheConfig


def hybrid_policy(entries: int, index_entries: int, config: CacheConfig) -> str | None:
    """How RediSearch should search a partition of ``entries`` in an index of ``index_entries``:
    "BATCHES" (the HNSW graph, filtered batch by batch) for a partition that is a large share of a large
    index, else None (RediSearch's choice, which here is always brute force over the partition's
    entries). Measured on a local Redis 8 (256-d, top 3): one partition of 30,000 entries costs 2.8 ms
    by brute force and 0.15 ms in batches; 3,000 partitions of 10 cost 25 µs by brute force and 11.5 ms
    in batches."""
    if entries >= config.batches_min_entries and entries >= config.batches_min_share * max(index_entries, 1):
        return "BATCHES"
    return None


def search_command(index_name: str, vector: np.ndarray, partition: str, policy: str | None,
                   config: CacheConfig) -> list[str | int | bytes]:
    """The FT.SEARCH of one question's nearest entries in its partition (the query RedisVL's
    ``VectorQuery`` builds, written out: building one costs more than the search's own round trip
    here). ``partition`` is a hex digest, so it needs no escaping in the tag filter."""
    hybrid = f" HYBRID_POLICY {policy}" if policy else ""
    knn = (f"(@partition:{{{partition}}})=>[KNN {config.candidates} @embedding $vector{hybrid} "
           f"EF_RUNTIME {config.hnsw_ef_runtime} AS vector_distance]")
    return ["FT.SEARCH", index_name, knn, "RETURN", 3, "question", "answer", "vector_distance",
            "SORTBY", "vector_distance", "ASC", "DIALECT", 2, "LIMIT", 0, config.candidates,
            "PARAMS", 2, "vector", vector.tobytes()]


def blank_rows(vectors: np.ndarray) -> np.ndarray:
    """Per row, whether it holds a NaN (a question not embedded, or one that cannot be) or only zeros (a
    question of no word the embedder knows, such as emoji: a vector with no direction, near nothing)."""
    return np.isnan(vectors).any(axis=1) | ~vectors.any(axis=1)


class Candidate(NamedTuple):
    """A near entry a search returned: its cosine distance, its question, its answer's JSON."""

    distance: float
    question: str
    answer: bytes


def candidates(reply: Any) -> list[Candidate]:
    """The entries of an FT.SEARCH reply in RESP2 (a count, then key and fields per entry) or RESP3 (a
    map with ``results``), nearest first; an entry without an answer is left out."""
    if isinstance(reply, dict):
        rows = [text_keys(row) for row in text_keys(reply)["results"]]
        entries = [text_keys(row.get("extra_attributes", {})) for row in rows]
    else:
        entries = [dict(zip(map(reply_text, found[::2]), found[1::2], strict=True)) for found in reply[2::2]]
    return [Candidate(float(e["vector_distance"]), reply_text(e.get("question", b"")), reply_bytes(e["answer"]))
            for e in entries if "answer" in e and "vector_distance" in e]


def text_keys(mapping: dict[Any, Any]) -> dict[str, Any]:
    """A RESP3 map of a reply with its keys as text."""
    return {reply_text(key): value for key, value in mapping.items()}


def reply_text(value: bytes | str) -> str:
    """A reply's field as text (TypeError for one of another type)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"a reply field of type {type(value).__name__}, not text")


def reply_bytes(value: bytes | str) -> bytes:
    """A reply's field as bytes (TypeError for one of another type)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"a reply field of type {type(value).__name__}, not bytes or text")
