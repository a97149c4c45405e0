"""The semantic cache's settings."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cascade.embeddings import EmbedderConfig, StaticConfig


class CacheConfig(BaseModel):
    """Semantic cache settings."""

    enabled: bool = True
    embedder: EmbedderConfig = Field(default_factory=StaticConfig)
    distance_threshold: float = Field(default=0.4, ge=0.0, le=2.0, description=(
        "cosine distance for a hit candidate; the wording guard then decides (bench_embedders: 0.4 keeps 81% "
        "of paraphrases at 0.01% false hits with the static embedder)"))
    candidates: int = Field(default=3, ge=1, le=50, description="nearest entries the wording guard checks")
    wording_guard: bool = Field(default=True, description=(
        "refuse an entry whose question differs in a word that changes the answer (cascade/cache/wording.py)"))
    ttl_s: int = Field(default=3600, ge=1)
    min_small_confidence: float = Field(default=0.9, ge=0.0, le=1.0,
                                        description="store small-model answers only at or above this confidence")
    index_name: str = "cascade-cache"
    batches_min_entries: int = Field(default=2000, ge=1, description=(
        "a partition with at least this many entries, holding at least ``batches_min_share`` of the index, "
        "is searched in HNSW batches; smaller ones by brute force over their entries (see hybrid_policy)"))
    batches_min_share: float = Field(default=0.25, ge=0.0, le=1.0)
    hnsw_m: int = Field(default=16, ge=2, le=512, description="HNSW graph edges per node")
    hnsw_ef_construction: int = Field(default=64, ge=1, description=(
        "HNSW candidates per insert: each stored answer is one insert, the largest Redis command of a cache "
        "miss (bench_cache_graph: 64 costs less than half of RediSearch's default 200 per insert)"))
    hnsw_ef_runtime: int = Field(default=40, ge=1, description=(
        "HNSW candidates per search through the graph (BATCHES); RediSearch's default 10 loses paraphrases "
        "that brute force finds (bench_cache_graph)"))
    hold_new_partitions: bool = Field(default=True, description=(
        "hold the first answer of a partition (tenant and scope) never asked before as an exact answer, not "
        "embedded or indexed, until the partition is asked again: a scope asked once (a conversation's own turn, "
        "a one-off system prompt) costs one hash write instead of an embedding and an index insert; the same "
        "question again is a hit, a paraphrase of it a miss until the partition's next answer is stored, which "
        "indexes the held ones too (Redis 7 or later: on an older server the first answer is indexed)"))
    marker_memo_s: float = Field(default=1.0, ge=0.0, description=(
        "how long a replica trusts the entry counts it read for a partition (tenant and scope) and the index; "
        "an entry another replica stores in a cold partition is found after at most this long"))
