"""OpenTelemetry for the router: a trace per request with a span per stage, and routing metrics.

Exporters follow the standard environment variables and are off unless set:
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` = ``otlp`` | ``console`` | ``none`` (default),
``OTEL_EXPORTER_OTLP_PROTOCOL`` = ``grpc`` (default) | ``http/protobuf``, the OTLP exporters' own
``OTEL_EXPORTER_OTLP_*`` endpoint and header variables, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_SDK_DISABLED=true`` turns everything off.

The router works on batches, so a request's stages are not each a separate call. Each tier call is
one real span for its batch (its context is what reaches the pool replicas); each request then
gets its own tree, built when its answer is final from the per-stage latencies the router
recorded: ``cascade.request`` → ``cache`` → ``tier.<name>`` → ``score.<name>`` → ``escalate`` →
``tier.<next>`` …, each tier span linked to its batch span.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Link, Span, SpanKind

from cascade.costs import total_cost
from cascade.schemas import RoutedAnswer

log = logging.getLogger(__name__)
SCOPE = "cascade"
_configured = False


def _exporter_choice(signal: str) -> str:
    return os.environ.get(f"OTEL_{signal}_EXPORTER", "none").split(",")[0].strip().lower()


def _protocol(signal: str) -> str:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL",
                          os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")).strip().lower()


def configure_from_env() -> None:
    """Install SDK tracer and meter providers with the exporters the ``OTEL_*`` variables choose;
    nothing when they choose none (the API then records nothing, at almost no cost). Idempotent."""
    global _configured
    if _configured or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    _configured = True
    traces, metric_exporter = _exporter_choice("TRACES"), _exporter_choice("METRICS")
    if traces == "none" and metric_exporter == "none":
        return
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "cascade")})
    if traces != "none":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(traces)))
        trace.set_tracer_provider(provider)
    if metric_exporter != "none":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        reader = PeriodicExportingMetricReader(_metric_exporter(metric_exporter))
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))


def _span_exporter(choice: str) -> Any:
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if choice != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={choice!r}: cascade supports otlp, console or none")
    if _protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return OTLPSpanExporter()


def _metric_exporter(choice: str) -> Any:
    if choice == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if choice != "otlp":
        raise ValueError(f"OTEL_METRICS_EXPORTER={choice!r}: cascade supports otlp, console or none")
    if _protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
    return OTLPMetricExporter()


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers, to send with a call to another process."""
    headers: dict[str, str] = {}
    inject(headers)
    return headers


@contextmanager
def continued(headers: Mapping[str, str] | None) -> Iterator[None]:
    """Make the trace context received in ``headers`` current (inside a pool replica)."""
    token = otel_context.attach(extract(dict(headers or {})))
    try:
        yield
    finally:
        otel_context.detach(token)


_counters: dict[str, Any] = {}


def _counter(name: str, description: str) -> Any:
    """A counter on the global meter, created once per process (after ``configure_from_env``)."""
    if name not in _counters:
        _counters[name] = metrics.get_meter(SCOPE).create_counter(name, unit="{record}", description=description)
    return _counters[name]


def count_dropped(kind: str, tenant: str, reason: str) -> None:
    """Count a record that could not be stored (``kind``: cache, feedback) in ``cascade.records.dropped``."""
    _counter("cascade.records.dropped", "records that could not be stored").add(
        1, {"kind": kind, "tenant": tenant, "reason": reason})


def count_refused_feedback(tenant: str) -> None:
    """Count a feedback label refused because the request id is not the caller's."""
    _counter("cascade.feedback.refused", "feedback labels refused: request id of another tenant").add(
        1, {"tenant": tenant})


class Counted(NamedTuple):
    """An answer for the counters: ``provisional`` where its route goes on in a job; a resumed route's
    final answer has ``counted_attempts``, those counted with its provisional answer."""

    answer: RoutedAnswer
    provisional: bool = False
    counted_attempts: int = 0


class Telemetry:
    """The router's tracer and instruments; providers default to the global ones."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self.requests = meter.create_counter("cascade.requests", unit="{request}", description="routed requests")
        self.escalations = meter.create_counter("cascade.escalations", unit="{request}",
                                                description="requests that went past the first tier")
        self.cache_hits = meter.create_counter("cascade.cache.hits", unit="{request}")
        self.degraded = meter.create_counter("cascade.degraded", unit="{request}")
        self.cost = meter.create_counter("cascade.cost", unit="USD", description="model cost of routed answers")
        self.tier_latency = meter.create_histogram("cascade.tier.latency", unit="ms",
                                                   description="one batched call to a tier")
        self.request_latency = meter.create_histogram("cascade.request.latency", unit="ms")
        self.batch_size = meter.create_histogram("cascade.batch.size", unit="{query}")
        self.threshold = meter.create_gauge("cascade.threshold", description="live threshold per tenant and tier")

    @contextmanager
    def tier_call(self, tier: str, model: str, batch_size: int) -> Iterator[Span]:
        """The span of one batched tier call, current while the engine runs; records its metrics."""
        started = time.perf_counter()
        with self.tracer.start_as_current_span(f"tier.{tier}.batch", kind=SpanKind.CLIENT, attributes={
                "cascade.tier": tier, "cascade.model": model, "cascade.batch_size": batch_size}) as span:
            yield span
        attributes = {"tier": tier}
        self.batch_size.record(batch_size, attributes)
        self.tier_latency.record((time.perf_counter() - started) * 1000, attributes)

    def record_thresholds(self, values: Mapping[str, float]) -> None:
        """The live thresholds, keyed ``tenant|tier`` as the controller stores them."""
        for name, value in values.items():
            tenant, _, tier = name.rpartition("|")
            self.threshold.set(value, {"tenant": tenant, "tier": tier})

    def record_answers(self, answers: Sequence[Counted]) -> None:
        """Counters for a batch of answers, one add per (tenant, tier) group. A progressive route counts
        once: its provisional answer counts the request, as escalated, and the cost so far; its job's
        final answer adds only the cost of the attempts after its checkpoint, and whether it is degraded."""
        requests: Counter[tuple[str, str]] = Counter()
        escalated: Counter[tuple[str, str]] = Counter()
        hits: Counter[tuple[str, str]] = Counter()
        degraded: Counter[tuple[str, str]] = Counter()
        cost: defaultdict[tuple[str, str], float] = defaultdict(float)
        for answer, provisional, counted_attempts in answers:
            key = (answer.tenant, answer.tier)
            new_request = counted_attempts == 0
            requests[key] += int(new_request)
            escalated[key] += int(new_request and (provisional or len(answer.attempts) > 1))
            hits[key] += int(answer.cache_hit)
            degraded[key] += int(answer.degraded)
            cost[key] += total_cost(answer.attempts[counted_attempts:])
        for key in requests:  # every answer's group: += creates its key, whatever it adds
            attributes = {"tenant": key[0], "tier": key[1]}
            self.requests.add(requests[key], attributes)
            self.escalations.add(escalated[key], attributes)
            self.cache_hits.add(hits[key], attributes)
            self.degraded.add(degraded[key], attributes)
            self.cost.add(cost[key], attributes)

    def trace_answer(self, answer: RoutedAnswer, started_ns: int, links: Mapping[str, Any] | None = None,
                     parent: Any = None, extra_stages: Sequence[tuple[str, float]] = (), *,
                     provisional: bool = False, resumed: bool = False) -> None:
        """The request's span tree, laid end to end from its recorded stage latencies. A progressive
        route has two: its provisional answer's, whose latency is the client's, and its job's
        (``resumed``), whose stages, the earlier tiers' included, are laid from the job's start."""
        attributes = {
            "cascade.tenant": answer.tenant, "cascade.tier": answer.tier, "cascade.model": answer.model,
            "cascade.decision": "escalate" if provisional or len(answer.attempts) > 1 else "accept",
            "cascade.confidence": answer.confidence if answer.confidence is not None else -1.0,
            "cascade.cost": answer.cost, "cascade.cache_hit": answer.cache_hit, "cascade.degraded": answer.degraded,
            "cascade.request_id": answer.request_id, "cascade.batch_size": answer.batch_size,
            "cascade.provisional": provisional, "cascade.resumed": resumed,
        }
        stages = [(s.stage, s.ms) for s in answer.latency] + list(extra_stages)
        ended_ns = started_ns + int(sum(ms for _, ms in stages) * 1e6)
        root = self.tracer.start_span("cascade.request", context=parent, kind=SpanKind.SERVER,
                                      start_time=started_ns, attributes=attributes)
        at = self._stage_spans(root, stages, links or {}, started_ns) if root.is_recording() else started_ns
        root.end(end_time=max(ended_ns, at))
        if not resumed:  # the client waited for the provisional answer, not for its job
            self.request_latency.record((max(ended_ns, at) - started_ns) / 1e6, {"tier": answer.tier})

    def _stage_spans(self, root: Span, stages: Sequence[tuple[str, float]], links: Mapping[str, Any],
                     started_ns: int) -> int:
        """The stages' spans under ``root``, end to end from ``started_ns``; returns where the last ends.
        Only for a recording root: without a tracer provider, or for a trace not sampled, there is
        nothing to build."""
        request_context = trace.set_span_in_context(root)
        at = started_ns
        for i, (stage, ms) in enumerate(stages):
            kind, _, tier = stage.partition(":")
            name = f"{kind}.{tier}" if tier else kind
            self._child(name, request_context, at, at + int(ms * 1e6), {"cascade.tier": tier} if tier else {},
                        links.get(stage))
            at += int(ms * 1e6)
            if kind == "score" and i + 1 < len(stages) and stages[i + 1][0].startswith("tier:"):
                self._child("escalate", request_context, at, at, {"cascade.from_tier": tier}, None)
        return at

    def _child(self, name: str, parent: Any, start_ns: int, end_ns: int, attributes: dict[str, Any],
               link: Any) -> None:
        span = self.tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes,
                                      links=[Link(link)] if link is not None else None)
        span.end(end_time=end_ns)
