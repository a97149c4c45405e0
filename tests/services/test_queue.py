"""Batch jobs and progressive answers on a real Ray Serve instance with a real Redis broker: the
task-consumer deployment (Celery on Redis) routes through scripted pools so that 200-line batches
finish in seconds. Questions come from the SQuAD 2.0 subset."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import orjson
import pytest
import redis

from cascade.breaker import CircuitOpenError, RedisFaultError
from cascade.local_redis import LocalRedis
from pipelines.datasets import load_qa
from services.batch.api import BatchApi
from services.batch.queue import TaskQueue
from services.batch.store import BatchStore, new_id
from services.batch.threads import STORE_THREADS
from services.openai_api import ApiError
from services.request_ids import RequestIds
from services.settings import CascadeSettings, load_service_settings
from tests.conftest import free_port, serve_apps

SECRET = "webhook-secret"
IDS = RequestIds(b"the queue app's request-id secret", 3600)  # batch lines' and progressive requests' ids


class Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint that keeps what it is sent."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def tier(name: str, policy: str, **engine_args: Any) -> dict[str, Any]:
    return {"name": name, "policy": policy, "price": {"input_per_million": 1, "output_per_million": 2},
            "engine": {"kind": "scripted", "model": f"{name}-model", "engine_args": engine_args},
            "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}}


@pytest.fixture(scope="module")
def queue_settings(redis_url: str, webhook: str) -> CascadeSettings:
    return CascadeSettings(
        tiers=[tier("small", "v1", uncertain_marker="What", context_window=2000),
               tier("large", "accept", delay_s=0.05)],
        redis_url=redis_url, cache={"enabled": False},
        server={"ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}},
                "request_id_secret": IDS.secret.decode(),
                "tenants": {"acme": {"api_keys": ["k-acme"], "webhook_url": webhook, "webhook_secret": SECRET},
                            "small-co": {"api_keys": ["k-small"]},
                            "throttled": {"api_keys": ["k-throttled"], "rate_limit_per_minute": 3}}},
        queue={"chunk_size": 8, "visibility_timeout_s": 5, "tenant_quota_lines": 450, "retry_backoff_s": 0.05,
               "max_lines": 500,
               "consumer": {"num_replicas": 1, "max_ongoing_requests": 2, "ray_actor_options": {"num_cpus": 0.05}}})


@pytest.fixture(scope="module")
def base_url(queue_settings: CascadeSettings) -> Iterator[str]:
    with serve_apps({"": queue_settings}) as url:
        yield url


def client(base_url: str, key: str = "k-acme") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)


def batch_file(data_dir: Path, n: int, extra: bytes = b"") -> bytes:
    records = load_qa("squad_v2", data_dir, limit=n)
    assert len(records) == n, f"the SQuAD 2.0 subset has {len(records)} questions, {n} needed"
    lines = [orjson.dumps({"custom_id": f"q-{r.id}", "method": "POST", "url": "/v1/completions",
                           "body": {"model": "cascade", "prompt": r.question, "context": list(r.context)}})
             for r in records]
    return b"\n".join(lines) + b"\n" + extra


def submit(api: openai.OpenAI, content: bytes) -> Any:
    uploaded = api.files.create(file=("batch.jsonl", io.BytesIO(content)), purpose="batch")
    return api.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")


def wait(api: openai.OpenAI, batch_id: str, timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = api.batches.retrieve(batch_id)
        if batch.status in {"completed", "failed", "cancelled", "expired"}:
            return batch
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id} still {batch.status}: {batch.request_counts}")


def lines_of(api: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(x) for x in api.files.content(file_id).content.splitlines() if x.strip()]


def consumer_actors() -> list[Any]:
    import ray

    return [ray.get_actor(a["name"], namespace=a["namespace"])
            for a in ray.util.list_named_actors(all_namespaces=True) if "task-consumer" in a["name"]]


def test_batch_of_200_squad_questions_answered_exactly_once(base_url: str, data_dir: Path) -> None:
    api = client(base_url)
    content = batch_file(data_dir, 200)
    expected = [orjson.loads(x)["custom_id"] for x in content.splitlines() if x.strip()]
    batch = wait(api, submit(api, content).id)
    assert batch.status == "completed" and batch.request_counts.total == 200
    assert batch.request_counts.completed == 200 and batch.request_counts.failed == 0
    output = lines_of(api, batch.output_file_id)
    assert [line["custom_id"] for line in output] == expected, "one line per custom_id, in input order"
    body = output[0]["response"]["body"]
    assert output[0]["response"]["status_code"] == 200 and body["object"] == "text_completion"
    assert body["routing"]["tier"] in {"small", "large"} and body["routing"]["batch_size"] > 1
    assert {line["response"]["body"]["routing"]["tier"] for line in output} == {"small", "large"}
    assert all(IDS.made_for(line["response"]["body"]["routing"]["request_id"], "acme") for line in output)
    assert all(line["response"]["body"]["routing"]["request_id"] == IDS.of_line(
        "acme", batch.created_at, f"{batch.id}:{line['custom_id']}") for line in output), (
        "a line's id is the same in every run of its chunk")
    store_calls = httpx.get(f"{base_url}/healthz").json()["batch_store"]
    assert store_calls["state"] == "closed" and store_calls["attempts"] > 0 and store_calls["failures"] == 0


def test_killing_a_consumer_replica_mid_batch_still_answers_exactly_once(base_url: str, data_dir: Path) -> None:
    import ray

    api = client(base_url)
    content = batch_file(data_dir, 240)
    started = submit(api, content)
    deadline = time.monotonic() + 30
    while api.batches.retrieve(started.id).request_counts.completed < 16:
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.1)
    [actor] = consumer_actors()
    ray.kill(actor, no_restart=False)
    batch = wait(api, started.id, timeout_s=240)
    assert batch.status == "completed"
    output = lines_of(api, batch.output_file_id)
    ids = [line["custom_id"] for line in output]
    assert len(ids) == len(set(ids)) == 240 and batch.request_counts.completed == 240


def test_malformed_lines_land_in_the_error_file(base_url: str, data_dir: Path) -> None:
    api = client(base_url)
    bad = b"\n".join([
        b"{not json",
        orjson.dumps({"custom_id": "no-body", "method": "POST", "url": "/v1/completions"}),
        orjson.dumps({"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {"prompt": "x"}}),
        orjson.dumps({"custom_id": "bad-temp", "method": "POST", "url": "/v1/completions",
                      "body": {"prompt": "x", "temperature": 9}}),
    ])
    batch = wait(api, submit(api, batch_file(data_dir, 10) + bad).id)
    assert batch.status == "completed" and batch.request_counts.completed == 10
    assert batch.request_counts.failed == 4
    errors = {line["custom_id"]: line for line in lines_of(api, batch.error_file_id)}
    assert set(errors) == {"line-11", "no-body", "wrong-url", "bad-temp"}
    assert errors["wrong-url"]["error"]["code"] == "invalid_url"
    assert "temperature" in errors["bad-temp"]["error"]["message"]
    assert errors["bad-temp"]["response"]["status_code"] == 400
    assert len(lines_of(api, batch.output_file_id)) == 10


def test_over_long_batch_lines_fail_alone_and_their_chunk_mates_succeed(base_url: str, data_dir: Path) -> None:
    """In one chunk of 8: a line over the server's prompt limit (refused when parsed, as an interactive
    request would be) and a line over the model's context window (refused by the pool, across Ray);
    the six others are answered; each error names its own line only and carries no traceback."""
    api = client(base_url)

    def line(custom_id: str, prompt: str) -> bytes:
        return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
                             "body": {"prompt": prompt}})

    content = line("too-many-chars", "x" * 33_000) + b"\n" + batch_file(data_dir, 6) + line("too-many-tokens",
                                                                                          "word " * 2500)
    batch = wait(api, submit(api, content).id)
    assert batch.status == "completed" and batch.request_counts.completed == 6 and batch.request_counts.failed == 2
    raw = api.files.content(batch.error_file_id).content
    errors = {e["custom_id"]: e for e in (orjson.loads(x) for x in raw.splitlines() if x.strip())}
    chars, tokens = errors["too-many-chars"], errors["too-many-tokens"]
    assert chars["response"]["status_code"] == 413 and chars["error"]["code"] == "prompt_too_long"
    assert "33000 characters" in chars["error"]["message"] and "32000" in chars["error"]["message"]
    assert tokens["response"]["status_code"] == 413 and tokens["error"]["code"] == "context_length_exceeded"
    assert "context window of 2000 tokens" in tokens["error"]["message"]
    for leak in (b"Traceback", b"site-packages", b"File \"", b"actor_id", b"pid="):
        assert leak not in raw, leak
    answered = [o["custom_id"] for o in lines_of(api, batch.output_file_id)]
    assert len(answered) == 6 and not set(answered) & set(errors)
    for custom_id, entry in errors.items():
        told = orjson.dumps(entry["error"]).decode()
        assert not any(other in told for other in [*answered, *errors] if other != custom_id), told


def test_an_upload_over_the_line_limit_is_413_with_the_limit(base_url: str) -> None:
    api = client(base_url)
    too_many = b"".join(orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                                      "body": {"prompt": "q"}}) + b"\n" for i in range(501))
    with pytest.raises(openai.APIStatusError) as raised:
        api.files.create(file=("many.jsonl", io.BytesIO(too_many)), purpose="batch")
    assert raised.value.status_code == 413 and "limit is 500 lines" in raised.value.message
    blank = b"\n" * 1002 + too_many.splitlines()[0]  # counted before the file is split into lines
    with pytest.raises(openai.APIStatusError) as raised:
        api.files.create(file=("blank.jsonl", io.BytesIO(blank)), purpose="batch")
    assert raised.value.status_code == 413 and "1002 line breaks" in raised.value.message


def test_cancel_stops_the_remaining_work(base_url: str, data_dir: Path) -> None:
    api = client(base_url)
    started = submit(api, batch_file(data_dir, 400))
    deadline = time.monotonic() + 30
    while api.batches.retrieve(started.id).request_counts.completed < 8:
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.05)
    cancelling = api.batches.cancel(started.id)
    assert cancelling.status in {"cancelling", "cancelled"}
    batch = wait(api, started.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    answered = len(lines_of(api, batch.output_file_id))
    assert answered == batch.request_counts.completed < 400


def test_queued_work_over_the_tenant_quota_is_429(base_url: str, data_dir: Path) -> None:
    api = client(base_url, "k-small")
    uploaded = api.files.create(file=("big.jsonl", io.BytesIO(batch_file(data_dir, 460))), purpose="batch")
    with pytest.raises(openai.RateLimitError) as raised:
        api.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
    assert raised.value.response.headers["retry-after"] == "60"


def test_uploads_and_batch_creations_count_against_the_tenants_rate_limit_and_cancelling_does_not(
        base_url: str, redis_url: str, data_dir: Path) -> None:
    api = client(base_url, "k-throttled")
    content = batch_file(data_dir, 1)

    def upload() -> Any:
        return api.files.create(file=("one.jsonl", io.BytesIO(content)), purpose="batch")

    def create() -> Any:
        return api.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")

    uploaded = upload()
    batch = create()
    store = redis.Redis.from_url(redis_url)
    minute = int(time.time() // 60)
    for window in (minute, minute + 1):  # the tenant's limit of 3 used up, this minute and the next
        store.set(f"cascade:rate:throttled:{window}", 3, ex=120)
    store.close()
    for write in (upload, create):
        with pytest.raises(openai.RateLimitError) as raised:
            write()
        assert 1 <= int(raised.value.response.headers["retry-after"]) <= 61
        assert raised.value.response.json()["error"]["code"] == "rate_limit_exceeded"
    assert api.batches.retrieve(batch.id).id == batch.id, "a read is not counted"
    with contextlib.suppress(openai.ConflictError):  # the batch finished first
        api.batches.cancel(batch.id)  # a tenant over its rate can still stop a batch
    assert client(base_url).files.create(file=("one.jsonl", io.BytesIO(content)), purpose="batch").id


def test_batch_input_errors_are_4xx(base_url: str) -> None:
    api = client(base_url)
    with pytest.raises(openai.NotFoundError):
        api.batches.create(input_file_id="file-missing", endpoint="/v1/completions", completion_window="24h")
    duplicate = orjson.dumps({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}})
    uploaded = api.files.create(file=("dup.jsonl", io.BytesIO(duplicate + b"\n" + duplicate)), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="unique"):
        api.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client(base_url, "k-small").files.content(uploaded.id)
    batch = api.batches.create(input_file_id=submit(api, duplicate).input_file_id, endpoint="/v1/completions",
                               completion_window="24h")
    for call in (lambda: api.files.retrieve(f"{uploaded.id}:content"), lambda: api.files.content(f"{uploaded.id}:x"),
                 lambda: api.batches.retrieve(f"{batch.id}:lines"), lambda: api.batches.cancel(f"{batch.id}:lines")):
        with pytest.raises(openai.NotFoundError):  # an id that is not one never reaches a key
            call()


def test_a_byte_order_mark_blank_lines_and_made_up_ids_cost_no_line(base_url: str, data_dir: Path) -> None:
    api = client(base_url)
    first, second = batch_file(data_dir, 2).splitlines()
    named_like_a_made_up_id = orjson.dumps({**orjson.loads(second), "custom_id": "line-3"})
    without_id = b'{"method": "POST", "url": "/v1/completions"}'
    content = b"\xef\xbb\xbf" + first + b"\n\n" + without_id + b"\n" + named_like_a_made_up_id
    batch = wait(api, submit(api, content).id)
    assert batch.status == "completed" and batch.request_counts.completed == 2 and batch.request_counts.failed == 1
    answered = {line["custom_id"] for line in lines_of(api, batch.output_file_id)}
    assert answered == {orjson.loads(first)["custom_id"], "line-3"}, "the first line is read past the BOM"
    assert [line["custom_id"] for line in lines_of(api, batch.error_file_id)] == ["line-3~"], \
        "the line without an id is named by its place in the file (line 3), not taken for a repeat of line-3"


def test_progressive_answer_by_polling_and_by_signed_webhook(base_url: str) -> None:
    Receiver.received.clear()
    headers = {"Authorization": "Bearer k-acme"}
    provisional = httpx.post(f"{base_url}/v1/chat/completions", headers=headers, timeout=30, json={
        "messages": [{"role": "user", "content": "What is escalated here?"}], "progressive": True}).json()
    routing = provisional["routing"]
    assert routing["provisional"] is True and routing["tier"] == "small" and routing["job_id"]
    assert provisional["choices"][0]["message"]["content"] == "What"
    deadline = time.monotonic() + 30
    job_url = f"{base_url}/v1/jobs/{routing['job_id']}"
    while (job := httpx.get(job_url, headers=headers).json())["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    final = job["response"]["routing"]
    assert final["tier"] == "large" and [a["tier"] for a in final["attempts"]] == ["small", "large"]
    assert final["cost"] == pytest.approx(routing["cost"] + final["attempts"][1]["cost"]), "small + large"
    assert job["response"]["object"] == "chat.completion"
    assert final["request_id"] == routing["request_id"] and IDS.made_for(routing["request_id"], "acme")
    label = httpx.post(f"{base_url}/v1/feedback", headers=headers, json={"request_id": routing["request_id"],
                                                                          "correct": True})
    assert label.status_code == 202, label.text
    while not Receiver.received:
        assert time.monotonic() < deadline, "the webhook was not called"
        time.sleep(0.1)
    sent_headers, body = Receiver.received[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sent_headers["X-Cascade-Signature"] == expected
    assert orjson.loads(body)["job_id"] == routing["job_id"]
    accepted = httpx.post(f"{base_url}/v1/chat/completions", headers=headers, json={
        "messages": [{"role": "user", "content": "Paris is where?"}], "progressive": True}).json()
    assert accepted["routing"]["provisional"] is False and accepted["routing"]["job_id"] is None
    assert httpx.get(f"{base_url}/v1/jobs/{routing['job_id']}",
                     headers={"Authorization": "Bearer k-small"}).status_code == 404


def test_a_progressive_completion_is_delivered_as_a_completion(base_url: str) -> None:
    headers = {"Authorization": "Bearer k-acme"}
    provisional = httpx.post(f"{base_url}/v1/completions", headers=headers, timeout=30, json={
        "prompt": "What completes here?", "progressive": True}).json()
    routing = provisional["routing"]
    assert routing["provisional"] is True and provisional["object"] == "text_completion"
    deadline, job_url = time.monotonic() + 30, f"{base_url}/v1/jobs/{routing['job_id']}"
    while (job := httpx.get(job_url, headers=headers).json())["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert job["response"]["object"] == "text_completion" and job["response"]["choices"][0]["text"]
    assert [a["tier"] for a in job["response"]["routing"]["attempts"]] == ["small", "large"]


def test_progressive_stream_ends_with_the_final_answer(base_url: str) -> None:
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", headers={"Authorization": "Bearer k-acme"},
                      json={"messages": [{"role": "user", "content": "What streams?"}], "progressive": True,
                            "stream": True}, timeout=60) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    first, final = orjson.loads(events[0]), orjson.loads(events[-2])
    assert first["routing"]["provisional"] is True
    assert final["object"] == "cascade.job" and final["status"] == "completed"
    assert final["response"]["routing"]["tier"] == "large"


def test_a_job_whose_finishing_keeps_failing_ends_with_its_provisional_answer_marked_degraded(
        base_url: str, queue_settings: CascadeSettings) -> None:
    """A job the consumer cannot finish (here its stored trail is unreadable, so every try raises) does not
    stay ``running`` once Celery's retries are spent: its provisional answer becomes the final one, marked
    degraded, for the poller and the webhook alike."""
    Receiver.received.clear()
    job_id = new_id("job")
    routing = {"tier": "small", "provisional": True, "job_id": job_id, "degraded": False,
               "reason": "escalating: confidence 0.2 below 0.7"}
    provisional = {"object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "What"}, "finish_reason": "stop"}], "routing": routing}
    assert queue_settings.redis_url is not None
    store = BatchStore(queue_settings.redis_url)
    try:
        store.save_job({"id": job_id, "object": "cascade.job", "tenant": "acme", "status": "running",
                        "created_at": int(time.time()), "shape": "chat", "trail": {"not": "a trail"},
                        "provisional": provisional})
    finally:
        store.close()
    queued = time.monotonic()
    TaskQueue(queue_settings).finish_job(job_id)
    headers = {"Authorization": "Bearer k-acme"}
    deadline = time.monotonic() + 90  # 4 tries, 1 + 2 + 4 s apart
    while (job := httpx.get(f"{base_url}/v1/jobs/{job_id}", headers=headers).json())["status"] != "completed":
        assert job["status"] == "running", job
        assert time.monotonic() < deadline, "the job stayed running after its task failed for good"
        time.sleep(0.5)
    assert time.monotonic() - queued >= 1 + 2 + 4, "given up before its retries were spent"
    final = job["response"]["routing"]
    assert final["degraded"] is True and final["provisional"] is False and final["tier"] == "small"
    assert final["reason"].startswith("escalating: confidence 0.2 below 0.7; finishing the escalation failed 4 times")
    assert "ValidationError" in final["reason"] and "/" not in final["reason"]
    assert job["answer"] == "What" and job["response"]["choices"] == provisional["choices"]
    while not (sent := [orjson.loads(body) for _, body in Receiver.received if job_id.encode() in body]):
        assert time.monotonic() < deadline, "the webhook was not called"
        time.sleep(0.1)
    assert len(sent) == 1 and sent[0]["response"]["routing"]["degraded"] is True


def test_stalled_batches_give_back_their_unfinished_chunks_once(redis_url: str) -> None:
    store = BatchStore(redis_url)
    batch = {"id": "batch-stall", "tenant": "t", "request_counts": {"total": 3}}
    assert store.create_batch(batch, [b"a", b"b", b"c"], ["a", "b", "c"], chunks=3, quota=10)
    assert store.stalled_chunks("batch-stall", after_s=60) == [], "it has just started"
    assert store.finish_chunk("batch-stall", 0, "t", 1, {"a": b"{}"}, {}) == (1, False)
    store.client.set("cascade:batchapi:batch:batch-stall:progress_at", time.time() - 120)
    assert store.stalled_chunks("batch-stall", after_s=60) == [1, 2]
    assert store.stalled_chunks("batch-stall", after_s=60) == [], "claimed once per interval"
    assert "batch-stall" in store.active()
    assert store.finalize("batch-stall") and "batch-stall" not in store.active()
    store.close()


def test_a_batch_whose_finalization_was_cut_short_is_finalized_by_the_sweep_once(redis_url: str) -> None:
    """Its last chunk was done, then the replica died (or Redis failed) before the batch got its files
    and status: it stays active, the sweep hands back its first chunk, whose run finalizes it; a
    repeated finalization rewrites the same files and keeps the first final status."""
    store = BatchStore(redis_url)
    batch = {"id": "batch-cut", "tenant": "t", "status": "in_progress", "request_counts": {"total": 2}}
    assert store.create_batch(batch, [b"a", b"b"], ["a", "b"], chunks=1, quota=10)
    assert store.finish_chunk("batch-cut", 0, "t", 2, {"a": b'{"a": 1}'}, {"b": b'{"b": 0}'}) == (2, True)
    store.client.set("cascade:batchapi:batch:batch-cut:progress_at", time.time() - 120)
    assert "batch-cut" in store.active() and store.stalled_chunks("batch-cut", after_s=60) == [0]
    assert store.finish_chunk("batch-cut", 0, "t", 2, {}, {}) == (0, True), "the re-run finds it answered"
    assert store.finalize("batch-cut")
    first = store.batch("batch-cut")
    assert first is not None and first["status"] == "completed" and "batch-cut" not in store.active()
    assert store.file_content(first["output_file_id"]) == b'{"a": 1}\n'
    assert store.file_content(first["error_file_id"]) == b'{"b": 0}\n'
    assert not store.finalize("batch-cut"), "final already"
    assert store.batch("batch-cut") == first and first["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    queued = store.client.get("cascade:batchapi:queued:t")
    assert store.finish_chunk("batch-cut", 0, "t", 2, {"a": b"late"}, {}) == (0, True), "a late run counts nowhere"
    assert store.client.get("cascade:batchapi:queued:t") == queued
    assert not store.client.exists("cascade:batchapi:batch:batch-cut:done", "cascade:batchapi:batch:batch-cut:results")
    store.close()


def test_two_runs_of_a_chunk_give_each_line_one_outcome(redis_url: str) -> None:
    """A chunk redelivered while its first run still goes on: one run answers a line, the other
    dead-letters it; the line keeps the outcome written first and is counted once."""
    store = BatchStore(redis_url)
    batch = {"id": "batch-twice", "tenant": "t", "status": "in_progress", "request_counts": {"total": 2}}
    assert store.create_batch(batch, [b"a", b"b"], ["a", "b"], chunks=1, quota=10)
    assert store.finish_chunk("batch-twice", 0, "t", 2, {"a": b"answer"}, {"b": b"failed"}) == (2, True)
    assert store.finish_chunk("batch-twice", 0, "t", 2, {"b": b"answer"}, {"a": b"failed"}) == (0, True)
    assert store.outcomes("batch-twice") == ({"a": b"answer"}, {"b": b"failed"})
    counts = store.batch("batch-twice")
    assert counts is not None and counts["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    store.close()


def test_a_cancel_that_comes_after_the_batch_finished_keeps_its_final_status(redis_url: str) -> None:
    store = BatchStore(redis_url)
    batch = {"id": "batch-race", "tenant": "t", "status": "in_progress", "request_counts": {"total": 1}}
    assert store.create_batch(batch, [b"a"], ["a"], chunks=1, quota=10)
    assert store.update_batch("batch-race", status="cancelling", unless_final=True), "not final yet"
    assert store.update_batch("batch-race", status="cancelled", output_file_id="file-out")
    assert not store.update_batch("batch-race", status="cancelling", unless_final=True)
    stored = store.batch("batch-race")
    assert stored is not None and stored["status"] == "cancelled" and stored["output_file_id"] == "file-out"
    assert not store.update_batch("batch-missing", status="cancelling")


def test_a_batch_and_its_count_of_queued_lines_are_stored_in_one_step(tmp_path: Path) -> None:
    """Made live whole or not at all: lines and ids in order across the commands that write them 1,000
    at a time, a batch over the quota leaves no count and its lines expire, and a Redis that freezes
    while a batch is sent (the client gives up; Redis runs what it was sent when it resumes) never keeps
    the count without the batch."""
    server = LocalRedis(port=free_port(), state_dir=tmp_path)
    try:
        store = BatchStore(server.start(), socket_timeout_s=0.3)

        def batch(size: int) -> tuple[dict[str, Any], list[bytes], list[str]]:
            made = {"id": new_id("batch"), "tenant": "t", "status": "in_progress", "request_counts": {"total": size}}
            return made, [orjson.dumps({"n": i}) for i in range(size)], [f"id-{i}" for i in range(size)]

        def queued() -> int:
            return int(store.client.get("cascade:batchapi:queued:t") or 0)

        first, lines, ids = batch(2000)
        assert store.create_batch(first, lines, ids, chunks=3, quota=3000)
        assert store.lines(first["id"], 0, 2000) == lines
        assert store.client.lrange(f"cascade:batchapi:batch:{first['id']}:ids", 0, -1) == [i.encode() for i in ids]
        assert store.client.ttl(f"cascade:batchapi:batch:{first['id']}:lines") == -1, "a live batch's lines stay"
        assert store.active() == [first["id"]] and queued() == 2000
        over, lines, ids = batch(1001)
        assert not store.create_batch(over, lines, ids, chunks=1, quota=3000)
        assert store.batch(over["id"]) is None and not store.client.keys(f"*{over['id']}*")
        assert queued() == 2000 and store.active() == [first["id"]]
        with pytest.raises(ValueError, match="2 custom_ids for 1 lines"):
            store.create_batch(over, lines[:1], ids[:2], chunks=1, quota=3000)
        frozen, lines, ids = batch(100)
        assert store.client.ping(), "connected before the freeze: the batch itself is what is sent into it"
        pid = server.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(redis.TimeoutError):
                store.create_batch(frozen, lines, ids, chunks=1, quota=3000)
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while len(store.client.client_list()) > 1:  # the given-up connection: what it sent is run before it closes
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stored = [b for b in (store.batch(first["id"]), store.batch(frozen["id"])) if b is not None]
        assert queued() == sum(b["request_counts"]["total"] for b in stored), (queued(), stored)
        assert store.active() == sorted(b["id"] for b in stored)
        if len(stored) == 1:
            assert store.client.ttl(f"cascade:batchapi:batch:{frozen['id']}:lines") > 0, "never live: they expire"
        store.close()
    finally:
        server.stop()


async def test_a_tenants_stored_files_are_bounded_and_expire_and_a_final_batch_expires_with_them(
        redis_url: str) -> None:
    """One tenant uploading without end would fill Redis (``noeviction``: then every tenant's writes fail):
    its files count against ``queue.tenant_quota_bytes`` until they expire after ``queue.retention_s``,
    and a batch once final expires with its output files; another tenant's quota is its own."""
    settings = load_service_settings(redis_url=redis_url, queue={"tenant_quota_bytes": 2500, "retention_s": 3600})
    api = BatchApi(settings, redis_url)
    first = await api.create_file("heavy", "a.jsonl", "batch", b"x" * 1500)
    assert first["expires_at"] - first["created_at"] == 3600
    for size in (1500, 10):  # a small file counts 1 KiB: its keys and accounts cost about that
        with pytest.raises(ApiError) as full:
            await api.create_file("heavy", "b.jsonl", "batch", b"x" * size)
        assert full.value.status == 413 and full.value.code == "storage_quota_exceeded"
        assert "has 1500 bytes of files stored; this server keeps at most 2500 per tenant" in full.value.message
    with pytest.raises(ApiError, match="the file is empty"):
        await api.create_file("heavy", "e.jsonl", "batch", b"\n")
    assert await api.create_file("light", "c.jsonl", "batch", b"x" * 1500), "a quota per tenant"
    store = api.store
    assert 3590 < store.client.ttl(f"cascade:batchapi:file:{first['id']}:content") <= 3600
    store.client.zadd("cascade:batchapi:stored-expiry:heavy", {first["id"]: time.time() - 1})  # as if expired
    assert await api.create_file("heavy", "d.jsonl", "batch", b"x" * 1500), "an expired file no longer counts"
    assert int(store.client.get("cascade:batchapi:stored-total:heavy")) == 1500
    batch = {"id": new_id("batch"), "tenant": "heavy", "status": "in_progress", "request_counts": {"total": 1}}
    assert store.create_batch(batch, [b"a"], ["a"], chunks=1, quota=10)
    assert store.finish_chunk(batch["id"], 0, "heavy", 1, {"a": b"{}"}, {}) == (1, True) and store.finalize(batch["id"])
    output = store.batch(batch["id"])
    assert output is not None and store.client.ttl(f"cascade:batchapi:batch:{batch['id']}") > 3590
    assert store.client.ttl(f"cascade:batchapi:file:{output['output_file_id']}") > 3590
    assert output["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    spent = [f"cascade:batchapi:batch:{batch['id']}:{name}" for name in ("lines", "results")]
    assert not store.client.exists(*spent), "its copy of the lines and its outcomes are dropped: the files hold them"
    store.close()


async def test_job_polls_while_redis_is_frozen_fail_fast_and_leave_the_shared_threads_free(tmp_path: Path) -> None:
    """Redis accepts and never answers (SIGSTOP; a partitioned network). Polls of a job hold the Batch
    API's own threads, never ``asyncio.to_thread``'s, which the ingress embeds questions on for every
    tenant; each is answered within the breaker's background timeout, not the store's 10 s socket
    timeout: a fault for a poll that had a thread, busy for one that waited for a thread; then the
    breaker skips Redis at once for its cool-down. After it, polls reach Redis again."""
    server = LocalRedis(port=free_port(), state_dir=tmp_path)
    try:
        settings = load_service_settings(redis_url=server.start(), redis_breaker={"cooldown_s": 1.0})
        others = {t for t in threading.enumerate() if t.name.startswith("cascade-batch-store")}  # earlier tests' pools
        api = BatchApi(settings, server.url)
        now = [0.0]
        api.calls.breaker.clock = lambda: now[0]  # the cool-down ends when the test says, however slow the machine
        job_id = new_id("job")
        with pytest.raises(ApiError, match="no job"):
            await api.job(job_id, "acme")
        polled = max(min(32, (os.cpu_count() or 1) + 4), STORE_THREADS) + 3  # beyond asyncio.to_thread's pool too
        pid = server.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            polls = [asyncio.create_task(api.job(job_id, "acme")) for _ in range(polled)]
            await asyncio.sleep(0.3)
            held = [t.name for t in threading.enumerate()
                    if t.name.startswith("cascade-batch-store") and t not in others]
            assert len(held) == STORE_THREADS, held
            waited = time.monotonic()
            assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), timeout=5) == "free"
            assert time.monotonic() - waited < 0.5
            outcomes = await asyncio.gather(*polls, return_exceptions=True)
            assert time.monotonic() - began < 2.5
            faults = [o for o in outcomes if isinstance(o, RedisFaultError)]
            busy = [o for o in outcomes if isinstance(o, ApiError) and o.status == 503 and "busy" in o.message]
            assert len(faults) == STORE_THREADS and len(busy) == len(polls) - STORE_THREADS, outcomes
            assert "no answer within 1000 ms" in str(faults[0])
            began = time.monotonic()
            with pytest.raises(CircuitOpenError):
                await api.job(job_id, "acme")
            assert time.monotonic() - began < 0.5, "skipped at once, not after the 1 s timeout"
        finally:
            os.kill(pid, signal.SIGCONT)
        now[0] += 1.1
        with pytest.raises(ApiError, match="no job"):
            await api.job(job_id, "acme")
        assert api.calls.breaker.state == "closed"
    finally:
        server.stop()
