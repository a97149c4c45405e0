"""One settings model for the whole service, loaded from a YAML file and ``CASCADE_*`` variables.

Priority, highest first: keyword arguments, environment (``CASCADE_DATA_DIR``, nested fields with
``__``, e.g. ``CASCADE_GENERATION__MAX_TOKENS=16``), the YAML file, the embedded defaults below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from cascade.schemas import GenerationParams
from cascade.thresholds import ControllerConfig


class DeploymentOptions(BaseModel):
    """Ray Serve options of one deployment, passed through to ``Deployment.options``.

    On CPU keep ``num_cpus`` fractional; a GPU pool sets ``ray_actor_options: {num_gpus: 1}`` and an
    ``accelerator_type``. ``autoscaling_config`` takes Ray Serve's keys (min_replicas, max_replicas,
    target_ongoing_requests, upscale_delay_s, ...); without it ``num_replicas`` is fixed.
    """

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling_config: dict[str, Any] | None = Field(
        default_factory=lambda: {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8})
    max_ongoing_requests: int = Field(default=64, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})
    health_check_period_s: float = Field(default=10.0, gt=0)
    logging_config: dict[str, Any] | None = Field(
        default=None, description="Serve LoggingConfig, e.g. {enable_access_log: false} under heavy load")

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> DeploymentOptions:
        if self.num_replicas is not None:
            self.autoscaling_config = None
        return self

    def serve_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Deployment.options``."""
        return self.model_dump(exclude_none=True)


class TierConfig(BaseModel):
    """One tier: its engine, its price, the policy that judges its answers, and its Serve pool."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    engine: EngineConfig
    policy: str = Field(default="v1", description="preset (v1, v2, v3, accept) or policy file path")
    price: ModelPrice = Field(default_factory=ModelPrice)
    timeout_s: float | None = Field(default=None, gt=0)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)


class RoutingProfile(BaseModel):
    """What a tenant's plan allows: the highest tier, its own threshold, and debug overrides."""

    model_config = ConfigDict(extra="forbid")

    max_tier: str | None = Field(default=None, description="highest tier this plan reaches; none: all")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0,
                                    description="escalate below this confidence instead of the tier policy")
    allow_overrides: bool = Field(default=False, description="requests may force a tier or set a threshold")


class TenantConfig(BaseModel):
    """A tenant: its API keys and the routing profile its plan gets."""

    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(default_factory=list)
    profile: str = "default"
    webhook_url: str | None = Field(default=None, description="where progressive answers are POSTed when final")
    webhook_secret: str | None = Field(default=None, description="HMAC-SHA256 key of the X-Cascade-Signature header")
    rate_limit_per_minute: int | None = Field(default=None, ge=1,
                                              description="this tenant's request limit; none: the server's")


class QueueConfig(BaseModel):
    """The task queue behind batch jobs and progressive answers (Ray Serve task consumers, Celery on Redis)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="needs server.use_redis")
    queue_name: str = "cascade-routing"
    chunk_size: int = Field(default=32, ge=1, le=1024, description="batch lines one task routes as one batch")
    max_lines: int = Field(default=50_000, ge=1, description="lines per batch input file")
    tenant_quota_lines: int = Field(default=100_000, ge=1, description="queued lines per tenant; more → 429")
    max_retries: int = Field(default=3, ge=0, description="task retries after a crash or an unexpected error")
    route_attempts: int = Field(default=3, ge=1, description="tries for lines whose every tier failed")
    retry_backoff_s: float = Field(default=0.5, ge=0.0)
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="per webhook delivery attempt")
    webhook_attempts: int = Field(default=3, ge=1, description="webhook deliveries tried, with backoff")
    visibility_timeout_s: int = Field(default=600, ge=1,
                                      description="a task not acknowledged this long (its replica died) runs again")
    consumer: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(
        autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2},
        max_ongoing_requests=4, ray_actor_options={"num_cpus": 0.25}))


class ServerConfig(BaseModel):
    """The HTTP router: address, request batching, tenants and the ingress deployment."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0)
    max_concurrent_batches: int = Field(default=4, ge=1)
    max_prompt_chars: int = Field(default=32_000, ge=1, description="longer prompts are refused with 413")
    max_tokens_limit: int = Field(default=1024, ge=1, description="largest max_tokens a request may ask for")
    max_body_bytes: int = Field(default=8 << 20, ge=1024, description="larger request bodies are refused with 413")
    max_upload_bytes: int = Field(default=64 << 20, ge=1024, description="larger /v1/files uploads → 413")
    rate_limit_per_minute: int | None = Field(
        default=None, ge=1, description="completions per tenant per minute, shared by all replicas (Redis); over → 429")
    use_redis: bool = Field(default=True, description="semantic cache, feedback log and live thresholds")
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict, description="no tenants: every request is the 'default' tenant, no key needed")
    profiles: dict[str, RoutingProfile] = Field(
        default_factory=lambda: {"default": RoutingProfile(allow_overrides=True)})
    ingress: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(
        num_replicas=1, max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.25}))

    @model_validator(mode="after")
    def _profiles_exist(self) -> ServerConfig:
        missing = {t.profile for t in self.tenants.values()} - set(self.profiles)
        if missing:
            raise ValueError(f"tenants use undefined profiles {sorted(missing)}; defined: {sorted(self.profiles)}")
        keys = [k for t in self.tenants.values() for k in t.api_keys]
        if len(keys) != len(set(keys)):
            raise ValueError("an API key is listed for more than one tenant")
        return self


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


class CascadeSettings(BaseSettings):
    """Everything ``cascade`` reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="CASCADE_", env_nested_delimiter="__", extra="forbid")

    tiers: list[TierConfig] = Field(default_factory=embedded_tiers, min_length=1)
    generation: GenerationParams = Field(default_factory=lambda: GenerationParams(max_tokens=24))
    data_dir: Path = Path("../shared/data")
    redis_url: str | None = Field(default=None, description="none: a local Redis is started on redis_port")
    redis_port: int = Field(default=6390, ge=1, le=65535)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    redis_breaker: BreakerConfig = Field(default_factory=BreakerConfig,
                                         description="Redis calls: timeout and cool-down after a fault")
    live_thresholds: bool = Field(default=True, description="apply thresholds set by the online controller")
    shadow_fraction: float = Field(default=0.0, ge=0.0, le=1.0,
                                   description="share of accepted small answers also sent to the large tier")
    server: ServerConfig = Field(default_factory=ServerConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    controller: ControllerConfig | None = Field(
        default=None, description="run the online threshold controller as a Serve deployment beside the router")

    @model_validator(mode="after")
    def _profile_tiers_exist(self) -> CascadeSettings:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        for name, profile in self.server.profiles.items():
            if profile.max_tier is not None and profile.max_tier not in names:
                raise ValueError(f"profile {name!r} caps at tier {profile.max_tier!r}, which is not one of {names}")
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


def load_settings(path: str | Path | None = None, **overrides: Any) -> CascadeSettings:
    """Settings from an optional YAML file, the environment and keyword overrides."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")

    class _FromFile(CascadeSettings):
        model_config = SettingsConfigDict(yaml_file=path)

    try:
        return _FromFile(**overrides)
    except ValidationError as error:
        source = f"config file {path}" if path else "configuration"
        raise ConfigError(f"{source} is invalid: {validation_summary(error)}") from None
