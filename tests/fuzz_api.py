"""A bounded schemathesis run against the router's own OpenAPI document, on a real Ray Serve and a real
local Redis (scripted pools, the task queue on, the cache off): fails on any 5xx, any status code
the document does not list, and any response that does not match its schema.

    python -m tests.fuzz_api [--max-examples 30] [--max-time 600]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from cascade.local_redis import LocalRedis
from services.settings import CascadeSettings
from tests.conftest import free_port, serve_apps

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def settings(redis_url: str) -> CascadeSettings:
    def tier(name: str, policy: str) -> dict[str, object]:
        return {"name": name, "policy": policy, "engine": {"kind": "scripted", "model": f"{name}-model",
                                                           "engine_args": {"uncertain_marker": "a"}},
                "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}}

    return CascadeSettings(
        tiers=[tier("small", "v1"), tier("large", "accept")], redis_url=redis_url, cache={"enabled": False},
        server={"ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}},
                "tenants": {"fuzz": {"api_keys": ["k-fuzz"]}}, "rate_limit_per_minute": 1_000_000},
        queue={"consumer": {"num_replicas": 1, "max_ongoing_requests": 2, "ray_actor_options": {"num_cpus": 0.05}}})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-examples", type=int, default=30, help="examples per operation and phase")
    parser.add_argument("--max-time", type=int, default=600, help="seconds for the whole run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        redis = LocalRedis(port=free_port(), state_dir=Path(state))
        try:
            with serve_apps({"": settings(redis.start())}) as url:
                command = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
                           "--checks", CHECKS, "--max-examples", str(args.max_examples),
                           "--max-time", str(args.max_time), "--workers", "1", "--seed", "16",
                           "--phases", "examples,coverage,fuzzing", "--header", "Authorization: Bearer k-fuzz",
                           "--suppress-health-check", "all", "--request-timeout", "60"]
                return subprocess.run(command, check=False).returncode
        finally:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
