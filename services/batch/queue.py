"""The task queue's configuration (Ray Serve ``TaskProcessorConfig``, Celery on Redis) and the
producer side the ingress uses to enqueue batch chunks and progressive jobs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from kombu.exceptions import OperationalError
from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig

from services.batch.store import SOCKET_TIMEOUT_S
from services.settings import CascadeSettings

PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.2}


def processor_config(settings: CascadeSettings) -> TaskProcessorConfig:
    """Celery with Redis as broker and result backend; dead-letter queues for tasks that keep failing; a
    Redis that stops answering is a fault after the store's socket timeout (kombu's default: never)."""
    assert settings.redis_url is not None, "the task queue needs redis_url"
    queue = settings.queue
    return TaskProcessorConfig(
        queue_name=queue.queue_name,
        adapter_config=CeleryAdapterConfig(
            broker_url=settings.redis_url, backend_url=settings.redis_url,
            broker_transport_options={"visibility_timeout": queue.visibility_timeout_s,
                                      "socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": SOCKET_TIMEOUT_S},
            app_custom_config={"result_expires": 24 * 3600, "worker_hijack_root_logger": False,
                               "redis_socket_timeout": SOCKET_TIMEOUT_S,
                               "redis_socket_connect_timeout": SOCKET_TIMEOUT_S},
        ),
        max_retries=queue.max_retries,
        failed_task_queue_name=f"{queue.queue_name}-failed",
        unprocessable_task_queue_name=f"{queue.queue_name}-unprocessable",
    )


def autoscaling_on_queue_depth(settings: CascadeSettings) -> dict[str, Any] | None:
    """The consumer's autoscaling config with Ray Serve's queue-depth policy added."""
    config = settings.queue.consumer.autoscaling_config
    if config is None:
        return None
    return {**config, "policy": {
        "policy_function": "ray.serve.async_inference_autoscaling_policy:AsyncInferenceAutoscalingPolicy",
        "policy_kwargs": {"broker_url": settings.redis_url, "queue_name": settings.queue.queue_name,
                          "poll_interval_s": 5.0}}}


class TaskQueue:
    """Enqueues tasks for the consumer deployment (synchronous: call it from a thread)."""

    def __init__(self, settings: CascadeSettings) -> None:
        from ray.serve.task_consumer import instantiate_adapter_from_config

        self.adapter = instantiate_adapter_from_config(processor_config(settings))

    def _enqueue(self, task: str, args: list[Any]) -> str:
        """The task's id; a broker fault is a ``redis.ConnectionError`` (kombu raises its own). Nothing
        reads a task's Celery result: not subscribing to it spares the result store's reconnect loop
        (20 tries) when Redis stops answering, and the publish is tried twice, not four times."""
        try:
            return str(self.adapter.enqueue_task_sync(task, args=args, ignore_result=True,
                                                      retry_policy=PUBLISH_RETRY).id)
        except OperationalError as error:
            raise redis.ConnectionError(f"the task queue's broker: {error}") from error

    def route_chunks(self, batch_id: str, chunks: Iterable[int]) -> None:
        for chunk in chunks:
            self._enqueue("route_chunk", [batch_id, chunk])

    def finish_job(self, job_id: str) -> str:
        return self._enqueue("finish_job", [job_id])
