"""`cascade serve` as a user runs it: the embedded CPU models on local Ray Serve, a local Redis
started for it, then `cascade ask --url` and the official `openai` client against it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from cascade.feedback import FeedbackLog
from cascade.local_redis import LocalRedis
from tests.conftest import CASCADE, free_port, wait_for_http, write_config

pytestmark = pytest.mark.model
CONTEXT = "The Eiffel Tower is in Paris. It was finished in 1889 and is 330 metres tall."


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    redis_port, port = free_port(), free_port()
    config = write_config(tmp_path_factory.mktemp("serve") / "cascade.yaml", redis_port=redis_port,
                          server={"port": port})
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen([CASCADE, "serve", "--config", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", process, timeout_s=300)
        yield url, redis_port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
        LocalRedis(port=redis_port).stop()


def test_cascade_ask_url_answers_through_the_server(served: tuple[str, int]) -> None:
    url, _ = served
    result = subprocess.run([CASCADE, "ask", "--url", url, "--json", "--context", CONTEXT,
                             "When was the Eiffel Tower finished?"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert isinstance(answer["answer"], str)
    assert answer["tier"] in {"small", "large"} and 0.0 <= answer["confidence"] <= 1.0
    assert answer["signals"]["n_tokens"] >= 0 and answer["cost"] > 0, "the prompt's tokens are paid for"
    assert answer["cost"] == pytest.approx(sum(a["cost"] for a in answer["attempts"]))


def test_cascade_ask_url_without_a_server_is_a_clear_error() -> None:
    result = subprocess.run([CASCADE, "ask", "--url", f"http://127.0.0.1:{free_port()}",
                             "Anything?"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no router answers" in result.stderr


def test_real_models_through_the_openai_client_with_cache_and_feedback(served: tuple[str, int]) -> None:
    url, redis_port = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
    question = "How tall is the Eiffel Tower?"
    forced = client.chat.completions.create(model="large", messages=[{"role": "user", "content": question}],
                                            extra_body={"context": [CONTEXT]})
    first = (forced.model_extra or {})["routing"]
    assert first["tier"] == "large" and first["model"] == "gemma3-270m" and not first["cache_hit"]
    assert isinstance(forced.choices[0].message.content, str)

    deadline = time.monotonic() + 30
    while True:  # the answer is stored off the request path
        again = client.chat.completions.create(model="cascade", messages=[{"role": "user", "content": question}],
                                               extra_body={"context": [CONTEXT]})
        routing = (again.model_extra or {})["routing"]
        if routing["cache_hit"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert routing["cache_hit"] and again.choices[0].message.content == forced.choices[0].message.content
    assert routing["cost"] == 0.0

    feedback = httpx.post(f"{url}/v1/feedback", json={"request_id": first["request_id"], "correct": True})
    assert feedback.status_code == 202 and feedback.json()["accepted"]

    async def stream_records() -> list[dict[str, object]]:
        log = FeedbackLog(f"redis://127.0.0.1:{redis_port}")
        try:
            return [record for _, record in await log.read_all()]
        finally:
            await log.close()

    records = asyncio.run(stream_records())
    mine = [r for r in records if r.get("request_id") == first["request_id"]]
    assert {r["kind"] for r in mine} == {"decision", "outcome"}, mine


def test_print_config_is_a_serve_config_for_the_same_settings(tmp_path: Path) -> None:
    result = subprocess.run([CASCADE, "serve", "--print-config"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    [application] = config["applications"]
    assert application["import_path"] == "services.app:app_from_args"
    assert [d["name"] for d in application["deployments"]] == ["router", "pool-small", "pool-large", "task-consumer"]
    assert application["deployments"][1]["autoscaling_config"]["max_replicas"] >= 1

    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)


def test_batch_job_and_progressive_answer_with_the_real_models(served: tuple[str, int]) -> None:
    url, _ = served
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
    questions = {"finished": "When was the Eiffel Tower finished?", "height": "How tall is the Eiffel Tower?",
                 "city": "In which city is the Eiffel Tower?"}
    lines = b"\n".join(json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                                   "body": {"messages": [{"role": "user", "content": q}], "context": [CONTEXT]}}
                                  ).encode() for key, q in questions.items())
    uploaded = api.files.create(file=("eiffel.jsonl", lines), purpose="batch")
    batch = api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 300
    while batch.status not in {"completed", "failed", "cancelled"}:
        assert time.monotonic() < deadline, batch
        time.sleep(1)
        batch = api.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3, batch
    assert batch.output_file_id is not None
    content = api.files.content(batch.output_file_id).text
    output = {line["custom_id"]: line for line in map(json.loads, content.splitlines())}
    assert set(output) == set(questions)
    assert all(isinstance(o["response"]["body"]["choices"][0]["message"]["content"], str) for o in output.values())
    assert {o["response"]["body"]["routing"]["model"] for o in output.values()} <= {"smollm2", "gemma3-270m"}

    reply = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": "Who designed the tower?"}], "context": [CONTEXT],
        "progressive": True, "routing": {"threshold": 1.0}, "max_tokens": 12}).json()
    routing = reply["routing"]
    assert routing["provisional"] and routing["model"] == "smollm2", "a threshold of 1 escalates every answer"
    while (job := httpx.get(f"{url}/v1/jobs/{routing['job_id']}").json())["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(1)
    assert job["response"]["routing"]["model"] == "gemma3-270m"
    assert isinstance(job["response"]["choices"][0]["message"]["content"], str)
