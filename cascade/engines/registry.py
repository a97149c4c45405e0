"""The one registry of engine kinds: a tier's ``engine:`` block is one of these, chosen by ``kind``.

To add an engine, write its module (the engine and its ``...Config`` with ``kind`` and ``build()``)
and add the config class to ``EngineConfig`` below.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cascade.engines.llamacpp import LlamaCppConfig
from cascade.engines.openai import OpenAIConfig
from cascade.engines.scripted import ScriptedConfig
from cascade.engines.vllm import VLLMConfig

EngineConfig = Annotated[LlamaCppConfig | VLLMConfig | OpenAIConfig | ScriptedConfig, Field(discriminator="kind")]
