"""The command line as a user runs it: real processes, the embedded CPU models, real data."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cascade.local_redis import LocalRedis
from tests.conftest import CASCADE, free_port, write_config

pytestmark = pytest.mark.model
CONTEXT = "The Normans gave their name to Normandy, a region in France."


def cascade(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CASCADE, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`cascade ask` starts a local Redis when none answers: give it its own port, stop it after."""
    port = free_port()
    yield {"CASCADE_REDIS_PORT": str(port)}
    LocalRedis(port=port).stop()


def test_ask_prints_the_answer_with_its_routing_and_the_cache_answers_the_same_question_until_forgotten(
        redis_port: dict[str, str], tmp_path: Path) -> None:
    """Whatever tier answers and whatever it says: every answer is stored (min_small_confidence 0, and
    last-tier answers always are), so the same question asked again, from another process, is a cache
    hit (the first answer of a scope is held by its question: a paraphrase hits once the scope has been
    asked twice, tests/cascade/test_redis.py); ``cascade cache forget`` then removes it."""
    config = str(write_config(tmp_path / "cascade.yaml", cache={"min_small_confidence": 0.0},
                              redis_breaker={"timeout_ms": 2000}))  # a loaded machine's stall is no Redis fault
    result = cascade("ask", "In what country is Normandy located?", "--context", CONTEXT, "--json", "--config",
                     config, env=redis_port)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["tier"] in {"small", "large"} and isinstance(answer["answer"], str) and not answer["cache_hit"]
    assert set(answer["signals"]) >= {"n_words", "mean_entropy", "mean_logprob", "first_token_margin"}
    assert answer["cost"] == pytest.approx(sum(a["cost"] for a in answer["attempts"]))
    human = cascade("ask", "In what country is Normandy located?", "--context", CONTEXT, "--config", config,
                    env=redis_port)
    assert human.returncode == 0 and "confidence" in human.stdout and "reason" in human.stdout
    assert "cache hit" in human.stdout, "the same question is answered from the semantic cache"
    forget = cascade("cache", "forget", "--tenant", "default", "--config", config, env=redis_port)
    assert forget.returncode == 0 and "1 cached answer of tenant 'default' forgotten" in forget.stdout, forget
    again = cascade("ask", "In what country is Normandy located?", "--context", CONTEXT, "--config", config,
                    env=redis_port)
    assert again.returncode == 0 and "cache hit" not in again.stdout, "forgotten: the models answer again"


def test_demo_json_summary(data_dir: Path, redis_port: dict[str, str], tmp_path: Path) -> None:
    """The demo starts the app on local Ray Serve and sends its questions over HTTP."""
    env = {**redis_port, "CASCADE_SERVER__PORT": str(free_port())}
    config = str(write_config(tmp_path / "cascade.yaml"))
    result = cascade("demo", "--n", "4", "--json", "--data-dir", str(data_dir), "--config", config, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n"] == 4
    assert set(summary["exact_match"]) == set(summary["cost"]) == {"small", "large", "routed"}
    assert 0.0 <= summary["escalation_rate"] <= 1.0
    cost = summary["cost"]
    assert cost["small"] <= cost["routed"] <= cost["small"] + cost["large"] + 1e-12
    if summary["escalation_rate"] == 0:
        assert cost["routed"] == pytest.approx(cost["small"])
    assert summary["cache_hits"] == 0 and summary["max_batch_size"] >= 1
    stream = redis.Redis(port=int(redis_port["CASCADE_REDIS_PORT"])).xlen("cascade:feedback")
    assert stream == 3 * 4, "every routed, small-only and large-only answer's decision reaches the feedback log"


@pytest.mark.parametrize(("args", "message"), [
    (("ask", "   "), "'prompt' is empty"),
    (("ask", "word " * 3000), "exceeds the model's context window of 2048 tokens"),
    (("ask", "q", "--config", "/nonexistent/cascade.yaml"), "config file /nonexistent/cascade.yaml does not exist"),
    (("demo", "--n", "1", "--data-dir", "/nonexistent"), "does not exist"),
])
def test_bad_input_gets_one_clear_line(args: tuple[str, ...], message: str, redis_port: dict[str, str]) -> None:
    result = cascade(*args, env=redis_port)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


def test_bad_model_path_and_policy_file_are_named(tmp_path: Path, redis_port: dict[str, str]) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text('{"kind": "logistic"')
    for tiers, message in [
        (f"[{{name: small, engine: {{kind: llamacpp, model: {tmp_path}/nope.gguf}}, policy: accept}}]",
         "nope.gguf does not exist"),
        (f"[{{name: small, engine: {{kind: scripted, model: s}}, policy: {policy}}}, "
         "{name: large, engine: {kind: scripted, model: l}}]", "is not valid JSON"),
    ]:
        config = tmp_path / "cascade.yaml"
        config.write_text(f"tiers: {tiers}\n")
        result = cascade("ask", "anything", "--config", str(config), env=redis_port)
        assert result.returncode == 2, result.stderr
        assert message in " ".join(result.stderr.split())
