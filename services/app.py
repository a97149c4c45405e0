"""The app builder: the router ingress and one model pool per tier whose engine runs in its own
process (a remote engine is called from the ingress itself), from one configuration.

``build_app`` returns the Serve application; ``serve_config`` writes the same application as a Serve
config (``serve deploy``, a KubeRay RayService's ``serveConfigV2``), whose ``import_path`` points
at ``app_from_args`` with the settings as its arguments.
"""

from __future__ import annotations

from typing import Any

import yaml
from ray import serve
from ray.serve import Application
from ray.serve.task_consumer import task_consumer

from services.batch.consumer import RoutingConsumer
from services.batch.queue import autoscaling_on_queue_depth, processor_config
from services.controller import ThresholdControllerDeployment
from services.ingress import RouterIngress, api
from services.pool import ModelPool
from services.settings import CascadeSettings

APP_NAME = "cascade"
INGRESS_NAME = "router"
CONTROLLER_NAME = "threshold-controller"
CONSUMER_NAME = "task-consumer"


def pool_name(tier: str) -> str:
    return f"pool-{tier}"


CONTROLLER_OPTIONS: dict[str, Any] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}


def queued(settings: CascadeSettings) -> bool:
    """Whether the task queue (batch jobs, progressive answers) runs: Redis on and the queue enabled."""
    return settings.server.use_redis and settings.queue.enabled


def controlled(settings: CascadeSettings) -> bool:
    """Whether the threshold controller deployment runs beside the router."""
    return settings.controller is not None and settings.server.use_redis


def topology(settings: CascadeSettings) -> dict[str, dict[str, Any]]:
    """Every deployment of the application, by name, with its Serve options: the one description of
    the app that ``build_app`` and ``serve_config`` both derive from."""
    deployments = {INGRESS_NAME: settings.server.ingress_options()}
    deployments |= {pool_name(t.name): t.deployment.serve_options() for t in settings.tiers if not t.in_ingress}
    if controlled(settings):
        deployments[CONTROLLER_NAME] = CONTROLLER_OPTIONS
    if queued(settings):
        consumer = settings.queue.consumer.serve_options()
        if "autoscaling_config" in consumer and settings.redis_url is not None:
            consumer["autoscaling_config"] = autoscaling_on_queue_depth(settings)
        deployments[CONSUMER_NAME] = consumer
    return deployments


def build_app(settings: CascadeSettings) -> Application:
    """The router ingress bound to one pool deployment per tier (and the controller and task consumer
    when configured), each with the Serve options ``topology`` gives it."""
    options = topology(settings)
    dumped = settings.model_dump(mode="json")
    pools = {t.name: serve.deployment(name=pool_name(t.name), **options[pool_name(t.name)])(ModelPool)
             .bind(t.model_dump(mode="json")) for t in settings.tiers if pool_name(t.name) in options}
    controller = consumer = None
    if (CONTROLLER_NAME in options or CONSUMER_NAME in options) and settings.redis_url is None:
        raise ValueError("the threshold controller and the task queue need redis_url (cascade serve resolves it)")
    if CONTROLLER_NAME in options:
        assert settings.controller is not None
        controller = serve.deployment(name=CONTROLLER_NAME, **options[CONTROLLER_NAME])(
            ThresholdControllerDeployment).bind(settings.redis_url, settings.controller.model_dump(mode="json"))
    if CONSUMER_NAME in options:
        deployment = task_consumer(task_processor_config=processor_config(settings))(RoutingConsumer)
        consumer = serve.deployment(name=CONSUMER_NAME, **options[CONSUMER_NAME])(deployment).bind(dumped, pools)
    ingress = serve.deployment(name=INGRESS_NAME, **options[INGRESS_NAME])(serve.ingress(api)(RouterIngress))
    return ingress.bind(dumped, pools, controller, consumer)


def app_from_args(args: dict[str, Any]) -> Application:
    """Application builder for Serve configs: ``args`` holds ``settings`` (a CascadeSettings dump)."""
    return build_app(CascadeSettings(**args.get("settings", {})))


def serve_config(settings: CascadeSettings, *, host: str = "0.0.0.0") -> dict[str, Any]:
    """The Serve config of the application, for ``serve deploy`` and a RayService's ``serveConfigV2``.

    The application's ``args`` hold only the settings the configuration sets (defaults are the
    same code on the cluster), so that ``CASCADE_*`` variables of the pods, e.g. tenant keys from a
    Secret, still apply to everything the file leaves unset."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": settings.server.port},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": "/",
            "import_path": "services.app:app_from_args",
            "args": {"settings": settings.model_dump(mode="json", exclude_unset=True)},
            "deployments": [{"name": name, **options} for name, options in topology(settings).items()],
        }],
    }


class _Block(str):
    """A string YAML writes as a literal block."""


def _block(dumper: yaml.SafeDumper, value: _Block) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|")


yaml.SafeDumper.add_representer(_Block, _block)


def rayservice_patch(settings: CascadeSettings, name: str = "cascade") -> str:
    """A kustomize patch (YAML) setting a RayService's ``serveConfigV2`` to this application."""
    config = serve_config(settings)
    body = {"proxy_location": config["proxy_location"], "applications": config["applications"]}
    patch = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": name},
             "spec": {"serveConfigV2": _Block(yaml.safe_dump(body, sort_keys=False))}}
    return yaml.safe_dump(patch, sort_keys=False)
