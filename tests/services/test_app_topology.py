"""One description of the app's deployments: the Serve config and the built application agree (no Ray needed)."""

from __future__ import annotations

from services.app import CONSUMER_NAME, CONTROLLER_NAME, INGRESS_NAME, pool_name, serve_config, topology
from services.settings import CascadeSettings


def settings(**overrides: object) -> CascadeSettings:
    tiers = [{"name": n, "engine": {"kind": "scripted", "model": n}} for n in ("small", "large")]
    return CascadeSettings(tiers=tiers, **overrides)


def test_topology_lists_the_ingress_each_pool_and_what_is_configured() -> None:
    full = settings(redis_url="redis://127.0.0.1:1", controller={"target": {"kind": "escalation_budget", "value": 0.3}})
    assert list(topology(full)) == [INGRESS_NAME, pool_name("small"), pool_name("large"), CONTROLLER_NAME,
                                    CONSUMER_NAME]
    bare = settings(server={"use_redis": False})
    assert list(topology(bare)) == [INGRESS_NAME, pool_name("small"), pool_name("large")]


def test_serve_config_deploys_exactly_the_topology() -> None:
    full = settings(redis_url="redis://127.0.0.1:1")
    [application] = serve_config(full)["applications"]
    assert {d.pop("name"): d for d in application["deployments"]} == topology(full)
    assert topology(full)[CONSUMER_NAME]["autoscaling_config"]["policy"], "the consumer scales on queue depth"
