"""The core's settings (tiers, generation, Redis, cache, feedback, thresholds), loaded from a YAML
file and ``CASCADE_*`` variables; ``services/settings.py`` extends them with the server's.

Priority, highest first: keyword arguments, environment (``CASCADE_DATA_DIR``, nested fields with
``__``, e.g. ``CASCADE_GENERATION__MAX_TOKENS=16``), the YAML file, the embedded defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from cascade.breaker import BreakerConfig
from cascade.cache import CacheConfig
from cascade.costs import ModelPrice
from cascade.engines.llamacpp import LlamaCppConfig
from cascade.engines.registry import EngineConfig
from cascade.errors import validation_summary
from cascade.feedback import FeedbackConfig
from cascade.prerouter import PreRouterConfig
from cascade.schemas import GenerationParams


class TierConfig(BaseModel):
    """One tier: its engine, its price and the policy that judges its answers (services/settings.py
    adds the Serve pool that runs it)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    engine: EngineConfig
    policy: str = Field(default="v1", description="preset (v1, v2, v3, accept) or policy file path")
    price: ModelPrice = Field(default_factory=ModelPrice)
    timeout_s: float | None = Field(default=None, gt=0)


def embedded_tiers() -> list[TierConfig]:
    """The CPU default: SmolLM2-135M-Instruct answers first, Gemma 3 270M takes escalations.

    Gemma is the large tier because it answered SQuAD better (see README). Both are prompted with
    worked examples in plain completion form, which scored higher than SmolLM2's chat template.

    Prices mirror the seed project's 1:10 ratio of small to large cost, in dollars per million
    tokens; set real prices for real deployments.
    """
    return [
        TierConfig(
            name="small",
            engine=LlamaCppConfig(model="smollm2", prompt_format="plain", stop=["\n"]),
            policy="v1",
            price=ModelPrice(input_per_million=0.02, output_per_million=0.04),
        ),
        TierConfig(
            name="large",
            engine=LlamaCppConfig(model="gemma3-270m", prompt_format="plain", stop=["\n"]),
            policy="accept",
            price=ModelPrice(input_per_million=0.2, output_per_million=0.4),
        ),
    ]


class CoreSettings(BaseSettings):
    """What the routing core reads: tiers, generation, Redis and what runs on it (cache, feedback,
    live thresholds). ``services.settings.CascadeSettings`` adds the server, the queue and the
    deployments; one YAML file and the same ``CASCADE_*`` variables drive both."""

    model_config = SettingsConfigDict(env_prefix="CASCADE_", env_nested_delimiter="__", extra="forbid")

    tiers: list[TierConfig] = Field(default_factory=embedded_tiers, min_length=1)
    generation: GenerationParams = Field(default_factory=lambda: GenerationParams(max_tokens=24))
    data_dir: Path = Path("../shared/data")
    redis_url: str | None = Field(default=None, description="none: a local Redis is started on redis_port")
    redis_port: int = Field(default=6390, ge=1, le=65535)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    prerouter: PreRouterConfig | None = Field(default=None, description=(
        "pre-generation routing: start each query at the tier a fitted ranking router picks"))
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    redis_breaker: BreakerConfig = Field(default_factory=BreakerConfig,
                                         description="Redis calls: timeout and cool-down after a fault")
    live_thresholds: bool = Field(default=True, description="apply thresholds set by the online controller")
    shadow_fraction: float = Field(default=0.0, ge=0.0, le=1.0,
                                   description="share of accepted small answers also sent to the large tier")

    @model_validator(mode="after")
    def _tier_names_unique(self) -> CoreSettings:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


class ConfigError(ValueError):
    """The configuration file or environment is invalid."""


SettingsT = TypeVar("SettingsT", bound=CoreSettings)


def load_settings(path: str | Path | None = None, kind: type[SettingsT] = CoreSettings,  # type: ignore[assignment]
                  **overrides: Any) -> SettingsT:
    """Settings of ``kind`` from an optional YAML file, the environment and keyword overrides."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")

    class _FromFile(kind):  # type: ignore[valid-type,misc]
        model_config = SettingsConfigDict(yaml_file=path)

    try:
        return cast(SettingsT, _FromFile(**overrides))
    except ValidationError as error:
        source = f"config file {path}" if path else "configuration"
        raise ConfigError(f"{source} is invalid: {validation_summary(error)}") from None
