"""Prometheus metrics of the platform, defined once here and updated by the code that knows.

Each web process keeps its own registry; Prometheus scrapes every instance behind the balancer.
Queue depth is read from the broker at scrape time rather than counted.
"""

from __future__ import annotations

import logging

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

HTTP_REQUESTS = Counter(
    "platform_http_requests_total",
    "HTTP requests answered, by method, route pattern and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "platform_http_request_duration_seconds",
    "Time to the response headers, by method and route pattern.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "platform_llm_tokens_total",
    "LLM tokens through the choke point, by direction (prompt or completion) and provider type.",
    ["direction", "provider_type"],
    registry=REGISTRY,
)
STREAMS_OPEN = Gauge(
    "platform_streams_open",
    "Server-sent event and WebSocket streams open in this process, by kind.",
    ["kind"],
    registry=REGISTRY,
)
STREAM_ADMISSION_WAIT = Histogram(
    "platform_stream_admission_wait_seconds",
    "Time a request that starts a stream waited for a slot before its work (core.admission).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "platform_jobs_finished_total",
    "Background jobs that ended, by kind and final status.",
    ["kind", "status"],
    registry=REGISTRY,
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request (called by the request middleware)."""
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


class QueueDepthCollector:
    """``platform_queue_depth``: messages waiting in the Celery queue, read on each scrape."""

    def collect(self):
        from core.health import broker_queue_depth

        family = GaugeMetricFamily(
            "platform_queue_depth", "Messages waiting in the Celery queue.", labels=["queue"]
        )
        try:
            depth = broker_queue_depth()
        except Exception:  # a broker outage must not break the scrape
            logger.warning("queue depth unavailable", exc_info=True)
            depth = None
        if depth is not None:
            family.add_metric(["celery"], depth)
        yield family


REGISTRY.register(QueueDepthCollector())
