"""The cache index's HNSW parameters: what one insert costs Redis (every stored answer is one) and
whether a search through the graph (``BATCHES``, what ``hybrid_policy`` picks for a large partition)
still finds a paraphrase's entry, against brute force over the same partition.

Entries: every SQuAD 2.0 question of the evaluation data, embedded with the cache's default
(static) embedder, in one partition. Probes: a paraphrase of some of them (``pipelines/paraphrases.py``:
typos, rewordings, lead-ins); found = the paraphrased question's entry is among the ``candidates``
nearest. Redis CPU per command from ``INFO commandstats``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from cascade.cache import CacheConfig, SemanticCache
from cascade.local_redis import LocalRedis
from pipelines.datasets import load_squad
from pipelines.paraphrases import build_pairs
from tests.conftest import free_port

SETTINGS = [(16, 200, 10), (16, 64, 10), (16, 64, 40), (16, 32, 40)]  # (M, EF_CONSTRUCTION, EF_RUNTIME)


def main() -> None:
    import redis
    from redisvl.index import SearchIndex
    from redisvl.query import VectorQuery
    from redisvl.query.filter import Tag

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=600)
    args = parser.parse_args()
    records = load_squad()
    questions = list(dict.fromkeys(r.question for r in records))
    paraphrases = [p for p in build_pairs([(r.group, r.question) for r in records]) if p.same_answer]
    rng = np.random.default_rng(0)
    chosen = [paraphrases[i] for i in rng.choice(len(paraphrases), min(args.probes, len(paraphrases)), replace=False)]
    row_of = {q: i for i, q in enumerate(questions)}
    with tempfile.TemporaryDirectory() as state:
        server = LocalRedis(port=free_port(), state_dir=Path(state))
        server.start()
        try:
            embedder = CacheConfig().embedder.build()
            vectors = embedder.embed(questions)
            probes = embedder.embed([p.other for p in chosen])
            client = redis.Redis.from_url(server.url)
            print(f"{len(questions):,} entries in one partition ({embedder.name}), {len(chosen)} paraphrase probes, "
                  f"top {CacheConfig().candidates}")
            print(f"{'M':>3} {'EF_CONSTRUCTION':>15} {'EF_RUNTIME':>10}  {'insert':>9}  {'search':>9}  "
                  f"{'found (graph)':>13}  {'found (brute force)':>19}")
            for m, construction, runtime in SETTINGS:
                config = CacheConfig(index_name=f"bench-graph-{m}-{construction}", hnsw_m=m,
                                     hnsw_ef_construction=construction, hnsw_ef_runtime=runtime)
                cache = SemanticCache(server.url, config, embedder)
                index = SearchIndex.from_dict(cache.schema, redis_url=server.url)
                index.create(overwrite=True)
                client.config_resetstat()
                for start in range(0, len(questions), 64):
                    index.load([{"partition": "p", "tenant": "t", "row": i, "embedding": vectors[i].tobytes()}
                                for i in range(start, min(start + 64, len(questions)))], id_field="row")
                insert = client.info("commandstats")["cmdstat_hset"]["usec_per_call"]
                found, search = {}, {}
                for policy in ("BATCHES", "ADHOC_BF"):
                    client.config_resetstat()
                    hits = 0
                    for pair, probe in zip(chosen, probes, strict=True):
                        result = index.query(VectorQuery(
                            vector=probe.tobytes(), vector_field_name="embedding", num_results=config.candidates,
                            return_fields=["row"], filter_expression=Tag("partition") == "p",
                            hybrid_policy=policy, ef_runtime=runtime if policy == "BATCHES" else None))
                        hits += any(r["id"].endswith(f":{row_of[pair.question]}") for r in result)
                    found[policy] = hits / len(chosen)
                    search[policy] = client.info("commandstats")["cmdstat_FT.SEARCH"]["usec_per_call"]
                print(f"{m:>3} {construction:>15} {runtime:>10}  {insert:>6.1f} µs  {search['BATCHES']:>6.1f} µs  "
                      f"{found['BATCHES']:>13.3f}  {found['ADHOC_BF']:>19.3f}")
                index.delete(drop=True)
            default = CacheConfig()
            print(f"default: M {default.hnsw_m}, EF_CONSTRUCTION {default.hnsw_ef_construction}, "
                  f"EF_RUNTIME {default.hnsw_ef_runtime} (RediSearch's own: 16, 200, 10)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
