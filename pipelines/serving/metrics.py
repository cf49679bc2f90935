"""Prometheus metrics of the serving gateway (pipelines/serving/gateway.py): requests, latency, errors by
status code, requests in flight, the served version and champion reloads. With several uvicorn
workers, PROMETHEUS_MULTIPROC_DIR is set and /metrics sums what every worker wrote there."""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

ROUTES = ("/invocations", "/health", "/ping", "/version", "/metrics")
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Prometheus metrics of one worker; aggregated over workers when PROMETHEUS_MULTIPROC_DIR is set."""

    def __init__(self, task: str) -> None:
        self.task = task
        disable_created_metrics()  # no *_created series: they double the exposition and nobody graphs them
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("seqops_http_requests", "HTTP requests answered, by method, route and status",
                                ["method", "route", "status"], registry=r)
        self.errors = Counter("seqops_http_errors", "HTTP responses with status >= 400, by status code",
                              ["status"], registry=r)
        self.latency = Histogram("seqops_http_request_duration_seconds", "Time from request to response, by route",
                                 ["route"], buckets=BUCKETS, registry=r)
        self.in_flight = Gauge("seqops_http_requests_in_flight", "Requests being answered",
                               registry=r, multiprocess_mode="livesum")
        self.version = Gauge("seqops_model_version", "Registered version being served", ["task"],
                             registry=r, multiprocess_mode="liveall")
        self.reloads = Counter("seqops_model_reloads", "Champion reloads, by result", ["result"], registry=r)

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(str(status)).inc()

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def close(self) -> None:
        """A worker going away: its live gauges (in flight, version) stop counting in the sum."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())
