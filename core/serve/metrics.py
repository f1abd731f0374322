"""The server's Prometheus metrics (prometheus_client), served as text at ``/metrics``.

Names follow Prometheus' conventions (``_total`` counters, ``_seconds`` histograms); every series is
labelled with the model and version, request series also with the protocol (``http`` / ``grpc``).
"""
from __future__ import annotations

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("engineroom_inference_requests", "Inference requests received",
                                ["model", "version", "protocol"], registry=r)
        self.failures = Counter("engineroom_inference_failures", "Inference requests answered with an error",
                                ["model", "version", "protocol", "reason"], registry=r)
        self.latency = Histogram("engineroom_inference_request_duration_seconds",
                                 "Time from a request's arrival to its answer", ["model", "version", "protocol"],
                                 buckets=_LATENCY, registry=r)
        self.queue = Histogram("engineroom_inference_queue_duration_seconds",
                               "Time a checked request waited for its run", ["model", "version"],
                               buckets=_LATENCY, registry=r)
        self.batch = Histogram("engineroom_inference_batch_size", "Rows in each run (merged requests)",
                               ["model", "version"], buckets=_BATCH, registry=r)
        self.runs = Counter("engineroom_inference_executions", "Session runs (one per batch)",
                            ["model", "version"], registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
