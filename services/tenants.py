"""Tenants from API keys, and the routing controls a tenant's profile and request add up to."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cascade.schemas import RoutingControls
from services.openai_api import ROUTER_MODEL, ApiError, RoutingOverride
from services.settings import RoutingProfile, ServerConfig

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Caller:
    """Who is asking and what their plan allows."""

    tenant: str
    profile: RoutingProfile


class TenantDirectory:
    """Resolves ``Authorization: Bearer <key>`` to a tenant; with no tenants configured, everyone is
    the default tenant on the default profile."""

    def __init__(self, config: ServerConfig, tier_names: list[str]) -> None:
        self.config = config
        self.tier_names = tier_names
        self._keys = [(key, name) for name, tenant in config.tenants.items() for key in tenant.api_keys]

    @property
    def open(self) -> bool:
        return not self._keys

    def caller(self, authorization: str | None) -> Caller:
        if self.open:
            return Caller(DEFAULT_TENANT, self.config.profiles.get("default", RoutingProfile()))
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", kind="authentication_error",
                           code="invalid_api_key")
        tenant = next((name for known, name in self._keys
                       if hmac.compare_digest(known.encode(), key.strip().encode())), None)
        if tenant is None:
            raise ApiError(401, "invalid API key", kind="authentication_error", code="invalid_api_key")
        return Caller(tenant, self.config.profiles[self.config.tenants[tenant].profile])

    def caller_of(self, tenant: str) -> Caller:
        """The caller a stored job belongs to (its tenant's profile today)."""
        config = self.config.tenants.get(tenant)
        profile = config.profile if config is not None else "default"
        return Caller(tenant, self.config.profiles.get(profile, RoutingProfile()))

    def controls(self, caller: Caller, model: str, override: RoutingOverride | None) -> RoutingControls:
        """The profile's limits plus the request's overrides (a tier named as ``model`` forces that tier)."""
        if model != ROUTER_MODEL and model not in self.tier_names:
            raise ApiError(404, f"model {model!r} does not exist; models are {[ROUTER_MODEL, *self.tier_names]}",
                           param="model", code="model_not_found")
        forced = model if model != ROUTER_MODEL else (override.tier if override else None)
        threshold = override.threshold if override else None
        if forced is not None or threshold is not None:
            if not caller.profile.allow_overrides:
                raise ApiError(403, f"tenant {caller.tenant!r}: this plan does not allow routing overrides",
                               param="routing", kind="permission_error")
            if forced is not None and forced not in self.tier_names:
                raise ApiError(400, f"routing.tier {forced!r} is not one of {self.tier_names}", param="routing.tier")
        return RoutingControls(force_tier=forced, max_tier=caller.profile.max_tier,
                               threshold=threshold if threshold is not None else caller.profile.threshold)
