"""Prometheus metrics, one registry per app so tests can build many apps in one process."""

from __future__ import annotations

from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PHASE_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "npg_requests_total",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.phase_seconds = Histogram(
            "npg_graph_phase_seconds",
            "Time spent in each graph phase",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.graph_bytes = Histogram(
            "npg_graph_json_bytes",
            "Size of graph JSON documents",
            buckets=(1e4, 1e5, 1e6, 1e7, 5e7, 1e8, 5e8),
            registry=self.registry,
        )
        self.uploads = Counter(
            "npg_uploads_total", "Graph uploads by outcome", ["outcome"], registry=self.registry
        )
        self.busy = Gauge("npg_busy", "1 while the model is in use", registry=self.registry)

    def init_app(self, app: Flask) -> None:
        app.extensions["npg_metrics"] = self

    def render(self) -> bytes:
        return generate_latest(self.registry)
