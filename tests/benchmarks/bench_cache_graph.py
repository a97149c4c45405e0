"""The cache index's HNSW parameters and vector size: what one insert costs Redis (every stored
answer is one), what one search costs, and whether a search through the graph (``BATCHES``, what
``hybrid_policy`` picks for a large partition) still finds a paraphrase's entry, against brute force
over the same partition.

Entries: every SQuAD 2.0 question of the evaluation data, embedded with the cache's default
(static) embedder, in one partition. Probes: a paraphrase of some of them (``pipelines/paraphrases.py``:
typos, rewordings, lead-ins); found = the paraphrased question's entry is among the ``candidates``
nearest. Redis CPU per command from ``INFO commandstats``. The second table keeps the default HNSW
parameters and varies the vector: the static embedding distilled to fewer dimensions, and its
values stored as float16 (Redis's memory for the index and its entries' hashes, without answers).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade.cache import CacheConfig, SemanticCache
from cascade.embeddings import Embedder, StaticEmbedder
from cascade.local_redis import LocalRedis
from pipelines.datasets import load_squad
from pipelines.paraphrases import Pair, build_pairs
from tests.conftest import free_port

SETTINGS = [(16, 200, 10), (16, 64, 10), (16, 64, 40), (16, 32, 40)]  # (M, EF_CONSTRUCTION, EF_RUNTIME)
DIMENSIONS = [64, 128, 256]  # of the static embedding, in the vector-size table


@dataclass
class Measured:
    """Redis CPU per insert and per search (µs), the share of probes found, the memory the entries and
    their index took in Redis (MB)."""

    insert: float
    search: dict[str, float]
    found: dict[str, float]
    memory_mb: float


def measure(url: str, embedder: Embedder, config: CacheConfig, questions: list[str], chosen: list[Pair],
            datatype: str = "float32") -> Measured:
    """Load every question into one partition of a new index, probe it with the paraphrases, drop it."""
    import redis
    from redisvl.index import SearchIndex
    from redisvl.query import VectorQuery
    from redisvl.query.filter import Tag

    vectors = embedder.embed(questions).astype(datatype)
    probes = embedder.embed([p.other for p in chosen]).astype(datatype)
    row_of = {q: i for i, q in enumerate(questions)}
    schema: dict[str, Any] = SemanticCache(url, config, embedder).schema
    schema["fields"][-1]["attrs"]["datatype"] = datatype
    client = redis.Redis.from_url(url)
    before = client.info("memory")["used_memory"]
    index = SearchIndex.from_dict(schema, redis_url=url)
    index.create(overwrite=True)
    try:
        client.config_resetstat()
        for start in range(0, len(questions), 64):
            index.load([{"partition": "p", "tenant": "t", "row": i, "embedding": vectors[i].tobytes()}
                        for i in range(start, min(start + 64, len(questions)))], id_field="row")
        insert = client.info("commandstats")["cmdstat_hset"]["usec_per_call"]
        memory = (client.info("memory")["used_memory"] - before) / 1e6
        found, search = {}, {}
        for policy in ("BATCHES", "ADHOC_BF"):
            client.config_resetstat()
            hits = 0
            for pair, probe in zip(chosen, probes, strict=True):
                result = index.query(VectorQuery(
                    vector=probe.tobytes(), vector_field_name="embedding", num_results=config.candidates,
                    return_fields=["row"], filter_expression=Tag("partition") == "p", dtype=datatype,
                    hybrid_policy=policy, ef_runtime=config.hnsw_ef_runtime if policy == "BATCHES" else None))
                hits += any(r["id"].endswith(f":{row_of[pair.question]}") for r in result)
            found[policy] = hits / len(chosen)
            search[policy] = client.info("commandstats")["cmdstat_FT.SEARCH"]["usec_per_call"]
        return Measured(insert, search, found, memory)
    finally:
        index.delete(drop=True)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=600)
    args = parser.parse_args()
    records = load_squad()
    questions = list(dict.fromkeys(r.question for r in records))
    paraphrases = [p for p in build_pairs([(r.group, r.question) for r in records]) if p.same_answer]
    rng = np.random.default_rng(0)
    chosen = [paraphrases[i] for i in rng.choice(len(paraphrases), min(args.probes, len(paraphrases)), replace=False)]
    default = CacheConfig()
    with tempfile.TemporaryDirectory() as state:
        server = LocalRedis(port=free_port(), state_dir=Path(state))
        url = server.start()
        try:
            embedder = default.embedder.build()
            print(f"{len(questions):,} entries in one partition ({embedder.name}), {len(chosen)} paraphrase probes, "
                  f"top {default.candidates}")
            print(f"{'M':>3} {'EF_CONSTRUCTION':>15} {'EF_RUNTIME':>10}  {'insert':>9}  {'search':>9}  "
                  f"{'found (graph)':>13}  {'found (brute force)':>19}")
            for m, construction, runtime in SETTINGS:
                config = CacheConfig(index_name=f"bench-graph-{m}-{construction}", hnsw_m=m,
                                     hnsw_ef_construction=construction, hnsw_ef_runtime=runtime)
                got = measure(url, embedder, config, questions, chosen)
                print(f"{m:>3} {construction:>15} {runtime:>10}  {got.insert:>6.1f} µs  "
                      f"{got.search['BATCHES']:>6.1f} µs  {got.found['BATCHES']:>13.3f}  "
                      f"{got.found['ADHOC_BF']:>19.3f}")
            print(f"default: M {default.hnsw_m}, EF_CONSTRUCTION {default.hnsw_ef_construction}, "
                  f"EF_RUNTIME {default.hnsw_ef_runtime} (RediSearch's own: 16, 200, 10)")
            print(f"\nvector size, default HNSW parameters\n{'vector':<24} {'insert':>9}  {'graph search':>12}  "
                  f"{'found':>6}  {'brute force':>11}  {'found':>6}  {'memory':>8}")
            for dimensions in DIMENSIONS:
                sized = StaticEmbedder(dimensions)
                for datatype in ("float32", "float16"):
                    config = CacheConfig(index_name=f"bench-size-{dimensions}-{datatype}")
                    got = measure(url, sized, config, questions, chosen, datatype)
                    print(f"{dimensions:>3}-d {datatype:<19} {got.insert:>6.1f} µs  {got.search['BATCHES']:>9.1f} µs  "
                          f"{got.found['BATCHES']:>6.3f}  {got.search['ADHOC_BF']:>8.1f} µs  "
                          f"{got.found['ADHOC_BF']:>6.3f}  {got.memory_mb:>5.1f} MB")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
