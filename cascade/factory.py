"""Builds engines and the router from configuration."""

from __future__ import annotations

from cascade.config import CascadeSettings, EngineConfig
from cascade.engines.base import Engine
from cascade.policies import resolve_policy
from cascade.router import Router, Tier


def build_engine(config: EngineConfig) -> Engine:
    """The engine a tier's configuration names; heavy imports happen only for the kind used."""
    if config.kind == "llamacpp":
        from cascade.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(config.model, prompt_format=config.prompt_format, stop=config.stop,
                              context_window=config.context_window, threads=config.threads)
    if config.kind == "vllm":
        from cascade.engines.vllm import VLLMEngine

        return VLLMEngine(config.model, prompt_format=config.prompt_format, stop=config.stop,
                          engine_args=config.engine_args)
    if config.kind == "openai":
        from cascade.engines.openai import OpenAIEngine

        assert config.base_url is not None
        return OpenAIEngine(config.base_url, config.model, api_key=config.api_key,
                            timeout_s=config.timeout_s, max_retries=config.max_retries)
    from cascade.engines.scripted import ScriptedEngine

    return ScriptedEngine(config.model)


def build_router(settings: CascadeSettings) -> Router:
    """A router with one tier per configured tier, in order, small to large."""
    return Router([
        Tier(name=t.name, engine=build_engine(t.engine), policy=resolve_policy(t.policy), price=t.price,
             timeout_s=t.timeout_s)
        for t in settings.tiers
    ])
