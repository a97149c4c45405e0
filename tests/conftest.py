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
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback only (read when ray is imported)

DATA_DIR = Path(os.environ.get("CASCADE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
CASCADE = str(Path(sys.executable).with_name("cascade"))  # the console script, as a user runs it

# Which llama.cpp numerics the model-dependent tests run with (`make test` runs them under both):
# "default" is the product's default (extra buffer types off); "alternate" turns flash attention on
# and, on CPUs without AMX, llama.cpp's extra buffer types (weight repacking) too. On AMX CPUs those
# buffer types select the AMX kernels that crash (see cascade/engines/llamacpp.py), so there the
# alternate numerics come from flash attention alone.
LLAMA_NUMERICS = os.environ.get("CASCADE_TEST_LLAMA_NUMERICS", "default")


def llama_options() -> dict[str, bool]:
    """Engine options of every llama.cpp engine the tests start, for the chosen numerics."""
    if LLAMA_NUMERICS == "default":
        return {"extra_buffer_types": False, "flash_attention": False}
    if LLAMA_NUMERICS == "alternate":
        from cli.doctor import cpu_flags

        return {"extra_buffer_types": "amx_int8" not in cpu_flags(), "flash_attention": True}
    raise ValueError(f"CASCADE_TEST_LLAMA_NUMERICS must be default or alternate, not {LLAMA_NUMERICS!r}")


def embedded_settings(**overrides: Any) -> dict[str, Any]:
    """The embedded default configuration as a dict, with the tests' llama.cpp options and overrides."""
    from services.settings import CascadeSettings

    settings = CascadeSettings().model_dump(mode="json", exclude_unset=False)
    tiers = [{"name": t["name"], "engine": {**t["engine"], **llama_options()}, "policy": t["policy"],
              "price": t["price"]} for t in settings["tiers"]]
    return {"tiers": tiers, **overrides}


def write_config(path: Path, **overrides: Any) -> Path:
    """A config file of the embedded default with the tests' llama.cpp options and ``overrides``."""
    import yaml

    path.write_text(yaml.safe_dump(embedded_settings(**overrides)))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, timeout_s: float = 5.0) -> bool:
    """Whether a GET of ``url`` is answered 200 (a refused or timed-out connection: not yet)."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.TransportError:
        return False


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before answering {url}")
        if answers(url, timeout_s=1.0):
            return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


MODEL_FIXTURES = {"smollm2", "gemma", "openai_server"}
# Fixtures that start a real server, engine or model: tests using them are integration tests.
INTEGRATION_FIXTURES = MODEL_FIXTURES | {"redis_url", "base_url", "served", "vllm_engine", "tiny_llama_dir",
                                        "mbpp"}  # mbpp: RouterBench prompts embedded with MiniLM
# Modules whose every test starts Ray Serve, Redis or a `cascade` process.
INTEGRATION_MODULES = {"test_serve", "test_queue", "test_local", "test_serve_embedded", "test_cli", "test_loadtest",
                       "test_redis", "test_telemetry", "test_engines"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark model tests (a packaged llama.cpp model through a fixture) and integration tests (a real
    server, engine or process); `make test-unit` runs the rest, the pure functions, in seconds."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if MODEL_FIXTURES & fixtures:
            item.add_marker(pytest.mark.model)
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if (INTEGRATION_FIXTURES & fixtures or module in INTEGRATION_MODULES or item.get_closest_marker("model")
                or item.get_closest_marker("integration")):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "squad_v2").is_dir():
        raise FileNotFoundError(f"evaluation data not found at {DATA_DIR}; set CASCADE_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
async def smollm2() -> AsyncIterator[object]:
    from cascade.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("smollm2", prompt_format="chat", **llama_options())
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture(scope="session")
async def gemma() -> AsyncIterator[object]:
    from cascade.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("gemma3-270m", prompt_format="plain", stop=["\n"], **llama_options())
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
    """llama-cpp-python's OpenAI-compatible server on SmolLM2, on a free loopback port, loading the
    model with the same llama.cpp options as the in-process engines (tests/llama_server.py) and
    evaluating a prompt in the engine's blocks (``PREFILL_BLOCK`` positions per call)."""
    from cascade.engines.llamacpp import PREFILL_BLOCK, resolve_model_path

    port = free_port()
    options = llama_options()
    command = [sys.executable, "-m", "tests.llama_server", str(options["extra_buffer_types"]).lower(),
               "--model", str(resolve_model_path("smollm2")), "--model_alias", "smollm2", "--logits_all", "true",
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1",
               "--n_batch", str(PREFILL_BLOCK), "--flash_attn", str(options["flash_attention"]).lower()]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


def echo_backend(*options: str) -> Iterator[str]:
    """The OpenAI-compatible echo backend (``tests/benchmarks/openai_echo.py``) in a process of its own,
    its base URL while it runs."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.openai_echo", "--port", str(port), *options])
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", process, timeout_s=60)
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
    from services.local import start_ray

    port = free_port()
    start_ray(num_cpus=2, quiet=True, proxy=next(iter(apps.values())).server.proxy)  # the default: HAProxy
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for prefix, settings in apps.items():
            serve.run(build_app(settings), name=prefix or "cascade", route_prefix=f"/{prefix}", blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        for prefix in apps:
            health = f"{url}/{prefix}/healthz" if prefix else f"{url}/healthz"
            while not answers(health):
                assert time.monotonic() < deadline, f"application {prefix or '/'} did not start"
                time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()
