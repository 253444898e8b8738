"""Prometheus metrics for one app (its own registry, so several apps in one process -- tests --
do not collide). Routes are labelled by their template (``/v1/photos/{photo_id}``), never the raw
path, so the label set stays bounded."""
from __future__ import annotations

from ..errors import MissingDependencyError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self):
        try:
            import prometheus_client as pc
        except ImportError as e:
            raise MissingDependencyError("prometheus-client", "serve", "the /metrics route") from e
        self.pc = pc
        self.registry = r = pc.CollectorRegistry()
        self.requests = pc.Counter("edgeinfer_requests_total", "HTTP requests", ["route", "method", "status"],
                                   registry=r)
        self.errors = pc.Counter("edgeinfer_request_errors_total", "HTTP responses with status >= 400",
                                 ["route", "status"], registry=r)
        self.latency = pc.Histogram("edgeinfer_request_seconds", "request latency", ["route"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.stage = pc.Histogram("edgeinfer_stage_seconds", "per-model stage time (decode is per "
                                  "request, preprocess per model, infer per engine batch)",
                                  ["model", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.batch = pc.Histogram("edgeinfer_batch_size", "images per engine call (coalesced requests)",
                                  ["model"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.queue = pc.Gauge("edgeinfer_queue_depth", "admitted inference requests (running + waiting)",
                              registry=r)
        self.rejected = pc.Counter("edgeinfer_rejected_total", "requests refused with 503 (queue full)",
                                   registry=r)
        self.library = pc.Gauge("edgeinfer_library_photos", "photos in the library store", registry=r)
        self.loaded = pc.Gauge("edgeinfer_model_loaded", "1 when the model is in memory", ["model"],
                               registry=r)
        self.load_seconds = pc.Gauge("edgeinfer_model_load_seconds", "last load time of the model",
                                     ["model"], registry=r)
        self.rss = pc.Gauge("edgeinfer_rss_bytes", "resident memory of the process", registry=r)

    def render(self) -> tuple[bytes, str]:
        return self.pc.generate_latest(self.registry), self.pc.CONTENT_TYPE_LATEST
