"""One description of the app's deployments: the Serve config and the built application agree (no Ray needed)."""

from __future__ import annotations

from services.app import CONSUMER_NAME, CONTROLLER_NAME, INGRESS_NAME, pool_name, serve_config, topology
from services.settings import USER_CODE_THREAD, CascadeSettings


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


def remote(name: str, **tier: object) -> dict[str, object]:
    return {"name": name, **tier, "engine": {"kind": "openai", "model": name, "base_url": "http://llm:8000/v1"}}


def test_remote_engines_run_in_the_ingress_unless_placed_in_a_pool() -> None:
    mixed = CascadeSettings(tiers=[{"name": "small", "engine": {"kind": "scripted", "model": "s"}}, remote("large")],
                            server={"use_redis": False})
    assert [t.in_ingress for t in mixed.tiers] == [False, True]
    assert list(topology(mixed)) == [INGRESS_NAME, pool_name("small")]
    pooled = CascadeSettings(tiers=[remote("small", placement="pool"), remote("large")], server={"use_redis": False})
    assert list(topology(pooled)) == [INGRESS_NAME, pool_name("small")]


def test_an_engine_that_needs_its_own_process_cannot_be_placed_in_the_ingress() -> None:
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="tier small: placement 'ingress' is for engines served"):
        CascadeSettings(tiers=[{"name": "small", "placement": "ingress", "engine": {"kind": "scripted", "model": "s"}},
                               remote("large")])


def test_the_ingress_handles_requests_on_its_replica_loop_unless_told_otherwise() -> None:
    def env(**server: object) -> dict[str, str]:
        actor = topology(settings(server={"use_redis": False, **server}))[INGRESS_NAME]["ray_actor_options"]
        return dict(actor["runtime_env"]["env_vars"])

    assert env() == {USER_CODE_THREAD: "0"}
    assert env(request_loop="thread") == {USER_CODE_THREAD: "1"}
    own = {"num_cpus": 0.5, "runtime_env": {"env_vars": {USER_CODE_THREAD: "1", "OTHER": "x"}}}
    assert env(ingress={"ray_actor_options": own}) == {USER_CODE_THREAD: "1", "OTHER": "x"}, "the deployment's own wins"


def test_first_pass_batches_wait_for_no_timer_and_are_capped_only_by_the_ingress() -> None:
    server = settings(server={"use_redis": False}).server
    assert server.batch_wait_timeout_s == 0.0
    assert server.batches_in_flight() == server.ingress.max_ongoing_requests == 512
    wider = settings(server={"use_redis": False, "ingress": {"max_ongoing_requests": 2048}}).server
    assert wider.batches_in_flight() == 2048
    assert settings(server={"use_redis": False, "max_concurrent_batches": 4}).server.batches_in_flight() == 4
