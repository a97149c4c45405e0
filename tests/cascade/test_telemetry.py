"""Traces and metrics of routed requests, captured with the SDK's in-memory exporter and reader;
the cache and feedback stages run on a real local Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cascade.cache import CacheConfig, SemanticCache
from cascade.costs import ModelPrice
from cascade.engines.scripted import ScriptedEngine
from cascade.feedback import FeedbackLog
from cascade.policies import PRESETS, AcceptAllPolicy
from cascade.router import Router, Tier
from cascade.schemas import Query
from cascade.telemetry import Telemetry, carrier, continued
from tests.cascade.test_router import large_script, small_script


@pytest.fixture
def captured() -> tuple[InMemorySpanExporter, InMemoryMetricReader, Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    return spans, reader, Telemetry(tracer_provider, MeterProvider(metric_readers=[reader]))


@pytest.fixture
async def router(redis_url: str, captured: tuple[Any, Any, Telemetry], tmp_path: Path) -> AsyncIterator[Router]:
    small = Tier("small", ScriptedEngine("small-model", small_script), PRESETS["v1"],
                 ModelPrice(input_per_million=1, output_per_million=2))
    large = Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy(),
                 ModelPrice(input_per_million=10, output_per_million=20))
    routed = Router([small, large],
                    cache=SemanticCache(redis_url, CacheConfig(index_name=f"telemetry-{tmp_path.name}")),
                    feedback=FeedbackLog(redis_url), telemetry=captured[2])
    yield routed
    await routed.close()


async def test_a_tier_batch_with_a_query_failing_alone_is_one_span_with_its_metrics(
        captured: tuple[InMemorySpanExporter, InMemoryMetricReader, Telemetry]) -> None:
    spans_exporter, reader, telemetry = captured
    small = Tier("small", ScriptedEngine("small-model", small_script, failing_marker="[fail]"), PRESETS["v1"])
    routed = Router([small, Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy())],
                    telemetry=telemetry)
    await routed.route([Query(prompt="easy one"), Query(prompt="easy two [fail]"), Query(prompt="easy three")])
    [batch] = [s for s in spans_exporter.get_finished_spans() if s.name == "tier.small.batch"]
    assert batch.status.is_ok and dict(batch.attributes or {})["cascade.failed_queries"] == 1
    metrics = reader.get_metrics_data()
    assert metrics is not None
    sizes = [point.sum for resource in metrics.resource_metrics for scope in resource.scope_metrics
             for metric in scope.metrics if metric.name == "cascade.batch.size" for point in metric.data.data_points
             if dict(point.attributes or {}).get("tier") == "small"]
    assert sizes == [3], "the batch's size is recorded though one of its queries failed"


def children_of(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    kids = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(kids, key=lambda s: (s.start_time or 0, s.end_time or 0))


async def test_span_tree_of_an_escalated_request(router: Router, captured: tuple[Any, Any, Telemetry]) -> None:
    spans_exporter = captured[0]
    [answer] = await router.route([Query(tenant="acme", prompt="hard question about France")])
    spans = list(spans_exporter.get_finished_spans())
    [root] = [s for s in spans if s.name == "cascade.request"]
    assert [s.name for s in children_of(spans, root)] == [
        "cache", "tier.small", "score.small", "escalate", "tier.large", "score.large", "feedback"]
    attributes = dict(root.attributes or {})
    assert attributes["cascade.tenant"] == "acme" and attributes["cascade.tier"] == "large"
    assert attributes["cascade.decision"] == "escalate" and attributes["cascade.cache_hit"] is False
    assert attributes["cascade.cost"] == pytest.approx(answer.cost) and attributes["cascade.cost"] > 0
    assert attributes["cascade.confidence"] == pytest.approx(answer.confidence)
    batches = {s.name: s for s in spans if s.name.endswith(".batch")}
    assert set(batches) == {"tier.small.batch", "tier.large.batch"}
    [small] = [s for s in children_of(spans, root) if s.name == "tier.small"]
    assert [link.context.span_id for link in small.links] == [batches["tier.small.batch"].context.span_id]
    assert all(s.context.trace_id == root.context.trace_id for s in children_of(spans, root))


async def test_cache_hit_request_is_one_cache_span(router: Router, captured: tuple[Any, Any, Telemetry]) -> None:
    await router.route([Query(tenant="acme", prompt="hard question about Spain")])
    captured[0].clear()
    [answer] = await router.route([Query(tenant="acme", prompt="hard question about Spain")])
    spans = list(captured[0].get_finished_spans())
    [root] = [s for s in spans if s.name == "cascade.request"]
    assert answer.cache_hit and dict(root.attributes or {})["cascade.cache_hit"] is True
    assert [s.name for s in children_of(spans, root)] == ["cache", "feedback"]


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {metric.name: list(metric.data.data_points)
            for resource in data.resource_metrics for scope in resource.scope_metrics for metric in scope.metrics}


async def test_metrics_for_a_batch(router: Router, captured: tuple[Any, InMemoryMetricReader, Telemetry]) -> None:
    batch = [Query(tenant="acme", prompt=f"{'easy' if i % 2 else 'hard'} batch question {i}") for i in range(6)]
    answers = await router.route(batch)
    points = metric_points(captured[1])
    assert sum(p.value for p in points["cascade.requests"]) == 6
    assert sum(p.value for p in points["cascade.escalations"]) == 3
    assert sum(p.value for p in points["cascade.cost"]) == pytest.approx(sum(a.cost for a in answers))
    sizes = {dict(p.attributes)["tier"]: p for p in points["cascade.batch.size"]}
    assert sizes["small"].count == 1 and sizes["small"].sum == 6
    assert sizes["large"].count == 3 and sizes["large"].sum == 3, "each escalation is its own large call"
    latency = {dict(p.attributes)["tier"]: p.count for p in points["cascade.tier.latency"]}
    assert latency == {"small": 1, "large": 3}
    assert {dict(p.attributes)["tier"] for p in points["cascade.request.latency"]} == {"small", "large"}


async def test_a_progressive_route_is_counted_once_and_its_provisional_span_says_escalate(
        captured: tuple[InMemorySpanExporter, InMemoryMetricReader, Telemetry]) -> None:
    spans_exporter, reader, telemetry = captured
    routed = Router([Tier("small", ScriptedEngine("small-model", small_script), PRESETS["v1"],
                          ModelPrice(input_per_million=1, output_per_million=2)),
                     Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy(),
                          ModelPrice(input_per_million=10, output_per_million=20))], telemetry=telemetry)
    [first] = await routed.answer([Query(tenant="acme", prompt="hard question")], mode="progressive")
    assert first.answer is not None and first.rest is not None
    [final] = await routed.answer([first.rest])  # its job resumes the route
    assert final.answer is not None and final.answer.tier == "large"
    points = metric_points(reader)
    assert {dict(p.attributes)["tier"]: p.value for p in points["cascade.requests"]} == {"small": 1, "large": 0}, (
        "counted when the client got its provisional answer")
    assert sum(p.value for p in points["cascade.escalations"]) == 1
    assert sum(p.value for p in points["cascade.cost"]) == pytest.approx(final.answer.cost), "each attempt once"
    assert sum(p.count for p in points["cascade.request.latency"]) == 1, "the client waited once"
    roots = {dict(s.attributes or {})["cascade.resumed"]: dict(s.attributes or {})
             for s in spans_exporter.get_finished_spans() if s.name == "cascade.request"}
    assert roots[False]["cascade.decision"] == "escalate" and roots[False]["cascade.provisional"] is True
    assert roots[True]["cascade.tier"] == "large" and roots[True]["cascade.provisional"] is False


def test_trace_context_crosses_a_process_boundary_as_w3c_headers() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("tier.small.batch") as caller:
        headers = carrier()
    assert headers["traceparent"].split("-")[1] == format(caller.get_span_context().trace_id, "032x")
    with continued(headers), tracer.start_as_current_span("pool.generate") as callee:
        pass
    assert callee.parent is not None and callee.parent.span_id == caller.get_span_context().span_id
    assert trace.get_current_span().get_span_context().is_valid is False, "the context is detached after"


async def test_a_trace_not_sampled_builds_no_spans_and_still_counts_its_latency() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    small = Tier("small", ScriptedEngine("small-model", small_script), PRESETS["v1"], ModelPrice())
    large = Tier("large", ScriptedEngine("large-model", large_script), AcceptAllPolicy(), ModelPrice())
    router = Router([small, large], telemetry=Telemetry(tracer_provider, MeterProvider(metric_readers=[reader])))
    [answer] = await router.route([Query(prompt="hard question about Peru")])
    assert len(answer.attempts) == 2 and spans.get_finished_spans() == ()
    [latency] = metric_points(reader)["cascade.request.latency"]
    assert latency.count == 1 and latency.sum == pytest.approx(sum(s.ms for s in answer.latency), rel=1e-3, abs=0.01)
