"""Builds engines and the router from configuration."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence

import orjson
import redis

from cascade.config import CoreSettings, TierConfig
from cascade.engines.base import Engine
from cascade.engines.registry import EngineConfig
from cascade.policies import resolve_policy
from cascade.prerouter import PreRouter
from cascade.router import Router, Tier

log = logging.getLogger(__name__)


def build_engine(config: EngineConfig) -> Engine:
    """The engine a tier's configuration names (each kind's config builds its own engine)."""
    return config.build()


def resolve_redis(settings: CoreSettings) -> str:
    """The Redis to use: the configured URL, else a local one on ``redis_port`` (started if none answers).

    With the cache on, a Redis that answers but has no search module stops start-up with a message
    saying so (set ``cache.enabled: false`` to run without the cache). A Redis that does not answer
    yet is not fatal: the router serves without the cache and buffers feedback until it returns.
    """
    from cascade.local_redis import LocalRedis, require_search

    url = settings.redis_url or LocalRedis(port=settings.redis_port).start()
    if settings.cache.enabled:
        try:
            require_search(url)
        except (redis.RedisError, OSError) as error:
            log.warning("Redis at %s does not answer; serving without the cache until it does: %s", url, error)
    return url


ANSWER_FIELDS = {"kind", "model", "prompt_format", "stop"}  # of an engine's config: what decides its answers' text


def answer_source(tiers: Sequence[TierConfig]) -> str:
    """What makes a deployment's answers, as its configuration names it, for the cache's partitions: each
    tier's name and its engine's kind, model, prompt format and stop strings (not its address, timeouts,
    concurrency or vLLM ``engine_args``). Another model name or prompt starts an empty cache, instead of
    serving the old model's answers until they expire; a new file or served model behind the same name
    does not (``cache.index_name`` does)."""
    return hashlib.sha256(orjson.dumps([[t.name, t.engine.model_dump(mode="json", include=ANSWER_FIELDS)]
                                        for t in tiers], option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def build_router(settings: CoreSettings, *, with_redis: bool = False,
                 engines: Mapping[str, Engine] | None = None) -> Router:
    """A router with one tier per configured tier, in order, small to large; ``with_redis`` adds the
    semantic cache, the feedback log and live thresholds. ``engines`` replaces the engines the
    configuration names (the Serve ingress passes its pool handles)."""
    engines = engines or {t.name: build_engine(t.engine) for t in settings.tiers}
    tiers = [Tier(name=t.name, engine=engines[t.name], policy=resolve_policy(t.policy), price=t.price,
                  timeout_s=t.timeout_s) for t in settings.tiers]
    prerouter = PreRouter.from_config(settings.prerouter) if settings.prerouter is not None else None
    if not with_redis:
        return Router(tiers, prerouter=prerouter)
    url = resolve_redis(settings)
    from cascade.breaker import RedisBreaker
    from cascade.cache import SemanticCache
    from cascade.feedback import FeedbackLog
    from cascade.thresholds import LiveThresholds

    breaker = RedisBreaker(settings.redis_breaker)  # one per process: a fault skips every Redis user at once
    shared = prerouter.embedder if prerouter is not None and settings.prerouter is not None and (
        settings.prerouter.embedder == settings.cache.embedder) else None  # one embedding per request
    return Router(
        tiers,
        prerouter=prerouter,
        cache=SemanticCache(url, settings.cache, shared, breaker=breaker, deployment=answer_source(settings.tiers))
        if settings.cache.enabled else None,
        feedback=FeedbackLog(url, settings.feedback, breaker=breaker),
        thresholds=LiveThresholds(url, breaker=breaker) if settings.live_thresholds else None,
        shadow_fraction=settings.shadow_fraction,
    )
