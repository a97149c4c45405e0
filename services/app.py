"""The app builder: the router ingress and one model pool per tier, from one configuration.

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

from cascade.config import CascadeSettings
from services.consumer import RoutingConsumer
from services.controller import ThresholdControllerDeployment
from services.ingress import RouterIngress, api
from services.pool import ModelPool
from services.queue import autoscaling_on_queue_depth, processor_config

APP_NAME = "cascade"
INGRESS_NAME = "router"
CONTROLLER_NAME = "threshold-controller"
CONSUMER_NAME = "task-consumer"


def pool_name(tier: str) -> str:
    return f"pool-{tier}"


def build_app(settings: CascadeSettings) -> Application:
    """The router ingress bound to one pool deployment per tier, each with its own Serve options."""
    pools = {
        t.name: serve.deployment(name=pool_name(t.name), **t.deployment.serve_options())(ModelPool)
        .bind(t.model_dump(mode="json"))
        for t in settings.tiers
    }
    ingress = serve.deployment(name=INGRESS_NAME, **settings.server.ingress.serve_options())(
        serve.ingress(api)(RouterIngress))
    controller = None
    if settings.controller is not None and settings.server.use_redis:
        if settings.redis_url is None:
            raise ValueError("the threshold controller deployment needs redis_url (cascade serve resolves it)")
        controller = serve.deployment(name=CONTROLLER_NAME, num_replicas=1, ray_actor_options={"num_cpus": 0.05})(
            ThresholdControllerDeployment).bind(settings.redis_url, settings.controller.model_dump(mode="json"))
    return ingress.bind(settings.model_dump(mode="json"), pools, controller, consumer_of(settings, pools))


def queued(settings: CascadeSettings) -> bool:
    """Whether the task queue (batch jobs, progressive answers) runs: Redis on and the queue enabled."""
    return settings.server.use_redis and settings.queue.enabled


def consumer_of(settings: CascadeSettings, pools: dict[str, Any]) -> Any:
    """The task-consumer deployment, autoscaling on queue depth; None when the queue is off."""
    if not queued(settings):
        return None
    if settings.redis_url is None:
        raise ValueError("the task queue needs redis_url (cascade serve resolves it)")
    options = settings.queue.consumer.serve_options()
    if "autoscaling_config" in options:
        options["autoscaling_config"] = autoscaling_on_queue_depth(settings)
    consumer = task_consumer(task_processor_config=processor_config(settings))(RoutingConsumer)
    return serve.deployment(name=CONSUMER_NAME, **options)(consumer).bind(settings.model_dump(mode="json"), pools)


def app_from_args(args: dict[str, Any]) -> Application:
    """Application builder for Serve configs: ``args`` holds ``settings`` (a CascadeSettings dump)."""
    return build_app(CascadeSettings(**args.get("settings", {})))


def serve_config(settings: CascadeSettings, *, host: str = "0.0.0.0") -> dict[str, Any]:
    """The Serve config of the application, for ``serve deploy`` and a RayService's ``serveConfigV2``.

    The application's ``args`` hold only the settings the configuration sets (defaults are the
    same code on the cluster), so that ``CASCADE_*`` variables of the pods, e.g. tenant keys from a
    Secret, still apply to everything the file leaves unset."""
    deployments = [{"name": INGRESS_NAME, **settings.server.ingress.serve_options()}]
    deployments += [{"name": pool_name(t.name), **t.deployment.serve_options()} for t in settings.tiers]
    if settings.controller is not None and settings.server.use_redis:
        deployments.append({"name": CONTROLLER_NAME, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}})
    if queued(settings):
        consumer = settings.queue.consumer.serve_options()
        if "autoscaling_config" in consumer and settings.redis_url is not None:
            consumer["autoscaling_config"] = autoscaling_on_queue_depth(settings)
        deployments.append({"name": CONSUMER_NAME, **consumer})
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": settings.server.port},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": "/",
            "import_path": "services.app:app_from_args",
            "args": {"settings": settings.model_dump(mode="json", exclude_unset=True)},
            "deployments": deployments,
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
