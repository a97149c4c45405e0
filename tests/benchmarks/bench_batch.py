"""Batch jobs against the interactive API: queries per second and cost per 1,000 queries for the same
SQuAD 2.0 questions, sent once as an OpenAI batch job (the task consumer routes chunks of 64 as one
batch) and once through /v1/completions at a fixed concurrency, in the same run.

The pools are scripted with a fixed time per call (0.2 s small, 0.3 s large) and priced per
GPU-second: they stand for GPU engines that serve a batch in parallel (vLLM's continuous batching),
so a call's time is shared by its batch. llama.cpp on this machine decodes a batch one query after
another, where batching saves nothing; the benchmark measures the queue path, not a model.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import orjson

from tests.conftest import DATA_DIR, free_port


def settings(redis_url: str) -> Any:
    from services.settings import CascadeSettings

    def tier(name: str, policy: str, delay_s: float, per_gpu_second: float) -> dict[str, Any]:
        return {"name": name, "policy": policy, "price": {"per_gpu_second": per_gpu_second},
                "engine": {"kind": "scripted", "model": f"{name}-model",
                           "engine_args": {"delay_s": delay_s, "uncertain_marker": "What"}},
                "deployment": {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.1},
                               "logging_config": {"enable_access_log": False}}}

    return CascadeSettings(
        tiers=[tier("small", "v1", 0.2, 0.0002), tier("large", "accept", 0.3, 0.001)], redis_url=redis_url,
        cache={"enabled": False},
        server={"max_batch_size": 16, "batch_wait_timeout_s": 0.01,
                "ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1},
                            "logging_config": {"enable_access_log": False}}},
        queue={"chunk_size": 64, "consumer": {"num_replicas": 1, "max_ongoing_requests": 2,
                                              "ray_actor_options": {"num_cpus": 0.1}}})


def requests_of(n: int) -> list[dict[str, Any]]:
    from pipelines.datasets import load_qa

    return [{"model": "cascade", "prompt": r.question, "context": list(r.context), "max_tokens": 16}
            for r in load_qa("squad_v2", DATA_DIR, limit=n)]


async def interactive(url: str, bodies: list[dict[str, Any]], concurrency: int) -> tuple[float, list[float]]:
    limit = asyncio.Semaphore(concurrency)
    costs: list[float] = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(body: dict[str, Any]) -> None:
            async with limit:
                response = await client.post(f"{url}/v1/completions", json=body)
                response.raise_for_status()
                costs.append(response.json()["routing"]["cost"])

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - started, costs


def batch_job(url: str, bodies: list[dict[str, Any]]) -> tuple[float, list[float]]:
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    lines = b"\n".join(orjson.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/completions", "body": b})
                       for i, b in enumerate(bodies))
    started = time.perf_counter()
    uploaded = api.files.create(file=("bench.jsonl", io.BytesIO(lines)), purpose="batch")
    batch = api.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
    while batch.status not in {"completed", "failed", "cancelled"}:
        time.sleep(0.2)
        batch = api.batches.retrieve(batch.id)
    elapsed = time.perf_counter() - started
    assert batch.output_file_id is not None and batch.request_counts.completed == len(bodies), batch
    output = [orjson.loads(x) for x in api.files.content(batch.output_file_id).content.splitlines()]
    return elapsed, [line["response"]["body"]["routing"]["cost"] for line in output]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256, help="questions")
    parser.add_argument("--concurrency", type=int, default=16, help="interactive requests in flight")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import tempfile

    import ray
    from ray import serve

    from cascade.local_redis import LocalRedis
    from services.app import build_app

    bodies = requests_of(args.n)
    with tempfile.TemporaryDirectory() as state:
        redis_server = LocalRedis(port=free_port(), state_dir=Path(state))
        port = free_port()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(settings(redis_server.start())), name="cascade", route_prefix="/")
            url = f"http://127.0.0.1:{port}"
            asyncio.run(interactive(url, bodies[:8], 4))
            one_by_one, interactive_costs = asyncio.run(interactive(url, bodies, args.concurrency))
            as_batch, batch_costs = batch_job(url, bodies)
        finally:
            serve.shutdown()
            ray.shutdown()
            redis_server.stop()
    print(f"{args.n} SQuAD 2.0 questions; scripted pools (0.2 s / 0.3 s per call, priced per GPU-second)")
    print(f"{'path':>28} {'seconds':>8} {'queries/s':>10} {'$ per 1k':>10}")
    rows = [(f"interactive, concurrency {args.concurrency}", one_by_one, interactive_costs),
            ("batch job, chunks of 64", as_batch, batch_costs)]
    for name, seconds, costs in rows:
        print(f"{name:>28} {seconds:>8.1f} {args.n / seconds:>10.1f} {1000 * float(np.mean(costs)):>10.5f}")
    print(f"batch/interactive: throughput {one_by_one / as_batch:.2f}x, "
          f"cost per query {float(np.mean(batch_costs)) / float(np.mean(interactive_costs)):.2f}x")


if __name__ == "__main__":
    main()
