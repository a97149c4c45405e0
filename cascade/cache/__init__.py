"""Tenant- and context-scoped semantic cache on RediSearch, batched (RedisVL creates the index; a lookup is
a pipeline of FT.SEARCH commands written out, see ``search.search_command``, and a store one pipeline of
the entries' hashes and their partitions' counts, see ``SemanticCache._write``). ``config.py`` holds its
settings, ``schema.py`` what an entry is and how it is keyed, ``search.py`` what a search sends and reads
back, ``semantic.py`` the cache, ``wording.py`` its guard on a hit, and ``purge.py`` forgets a tenant.

Similarity is on the user's question only (cosine, with the configured embedder: by default a
static embedding distilled from MiniLM; each embedder has its own index). A near vector is not
enough for a hit: the nearest entries within the distance threshold are checked in turn by the
wording guard (``wording.py``), which refuses an entry whose question differs in a word
that changes the answer ("largest" for "smallest", a "not", a number). Everything else the model saw — system
prompt, context documents, generation parameters — is hashed into a ``scope``; tenant and scope,
with what made the answers (the deployment's tiers, their models and prompts: ``deployment``),
together make the ``partition`` tag a lookup filters on (one tag: a filter on two costs Redis half as
much again per search), which must match exactly: the same question about another document, from
another tenant, or answered by another deployment's models, never hits. A batch of queries costs one
batched embedding and one pipelined round trip for the lookups (batches that come while a lookup is
under way wait for it and are looked up together), and one more for the stores and their counts. A
cold cache costs no embedding at all: each store counts its entries in a marker per partition (and
one for the index) that outlives them, a lookup embeds only the questions whose marker is set (markers read in one round
trip, remembered for ``marker_memo_s``), and the others are embedded when their answers are stored,
off the request path. A partition never asked before (no marker) is not embedded even then: its
first answer is held by its exact question (``hold_new_partitions``), found again by that question
alone, and indexed with the partition's next stored answer.
The counts also pick each search's strategy (``hybrid_policy``): brute force over a small
partition's entries, the HNSW graph for a partition that is most of the index. Redis faults turn the cache off
for that call, with a warning and a counter, and open the Redis circuit breaker, which skips the
cache at once until its cool-down ends; they never fail a request. A question that cannot be
embedded, or an entry that cannot be built, is a miss or an unstored answer for that query alone,
logged and counted.
"""

from cascade.cache.config import CacheConfig
from cascade.cache.purge import cache_indexes, purge_tenant
from cascade.cache.schema import (
    SCHEMA_VERSION,
    Hold,
    entry_tags,
    holds_answers,
    index_schema,
    question_field,
    scope_of,
    tag_value,
)
from cascade.cache.search import Candidate, blank_rows, candidates, hybrid_policy, search_command
from cascade.cache.semantic import NEW_PARTITION, PROMOTED_MAX, CacheLookup, CacheStats, SemanticCache, Storing

__all__ = ["NEW_PARTITION", "PROMOTED_MAX", "SCHEMA_VERSION", "CacheConfig", "CacheLookup", "CacheStats", "Candidate",
           "Hold", "SemanticCache", "Storing", "blank_rows", "cache_indexes", "candidates", "entry_tags",
           "holds_answers", "hybrid_policy", "index_schema", "purge_tenant", "question_field", "scope_of",
           "search_command", "tag_value"]
