"""Shared fixtures: real engines, started once per test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA_DIR = Path(os.environ.get("CASCADE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "squad_v2").is_dir():
        raise FileNotFoundError(f"evaluation data not found at {DATA_DIR}; set CASCADE_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
async def smollm2() -> AsyncIterator[object]:
    from cascade.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("smollm2", prompt_format="chat")
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture(scope="session")
async def gemma() -> AsyncIterator[object]:
    from cascade.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("gemma3-270m", prompt_format="plain", stop=["\n"])
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
async def vllm_engine(tiny_llama_dir: Path) -> AsyncIterator[object]:
    from cascade.engines.vllm import VLLMEngine

    engine = VLLMEngine(str(tiny_llama_dir), prompt_format="plain", engine_args={
        "dtype": "float32", "enforce_eager": True, "max_model_len": 256, "kv_cache_memory_bytes": 64 << 20,
    })
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture(scope="session")
def openai_server() -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on SmolLM2, on a free loopback port."""
    from cascade.engines.llamacpp import resolve_model_path

    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_model_path("smollm2")),
               "--model_alias", "smollm2", "--logits_all", "true", "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", "1024", "--n_threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Redis 8 with search for the module, started through the launcher."""
    from cascade.local_redis import LocalRedis

    server = LocalRedis(port=free_port(), state_dir=tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


@contextmanager
def serve_apps(apps: Mapping[str, Any], timeout_s: float = 180.0) -> Iterator[str]:
    """A local Ray Serve with one application per route prefix (settings by prefix, "" for "/"),
    yielding the base URL once every application's /healthz answers 200."""
    import ray
    from ray import serve

    from services.app import build_app

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for prefix, settings in apps.items():
            serve.run(build_app(settings), name=prefix or "cascade", route_prefix=f"/{prefix}", blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        for prefix in apps:
            health = f"{url}/{prefix}/healthz" if prefix else f"{url}/healthz"
            while httpx.get(health, timeout=5).status_code != 200:
                assert time.monotonic() < deadline, f"application {prefix or '/'} did not start"
                time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()
