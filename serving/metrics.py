"""`ServerMetrics`: the server's Prometheus metrics (prometheus_client), served at ``/metrics``.

Names follow Prometheus conventions (base units, ``_total`` counters, histograms):

- ``cdd_requests_total{method,code}``: finished calls by method and gRPC status code (refused ones too);
- ``cdd_request_duration_seconds{method}``: call latency in the server, admission to response;
- ``cdd_queue_duration_seconds``: time a request waited in the batcher queue before its engine call;
- ``cdd_compute_duration_seconds``: time of one engine call (one batch);
- ``cdd_batch_size``: images per engine call;
- ``cdd_in_flight_requests``: Retrieval calls being served now;
- ``cdd_gallery_items``: items in the gallery (read at scrape time);
- ``cdd_write_failures_total{reason}``: gallery changes refused because the disk could not take them
  (``disk_full``: ENOSPC / EDQUOT, ``io_error``: any other I/O error);
- ``cdd_build_info{bundle_sha256,bundle_name,backend,version}``: always 1, labels describe the server.

Each `ServerMetrics` has its own registry, so several servers in one process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ServerMetrics", "package_version"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def package_version() -> str:
    """The installed cdd-retrieval version, or "unknown" when run from a source tree without install."""
    try:
        return metadata.version("cdd-retrieval")
    except metadata.PackageNotFoundError:
        return "unknown"


class ServerMetrics:
    """The metrics above, on ``registry`` (a new one by default). `serve_http` exposes them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("cdd_requests", "Finished calls by method and status code",
                                ["method", "code"], registry=r)
        self.request_duration = Histogram("cdd_request_duration_seconds", "Call latency in the server",
                                          ["method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram("cdd_queue_duration_seconds", "Wait in the batcher queue",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_duration = Histogram("cdd_compute_duration_seconds", "One engine call (one batch)",
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("cdd_batch_size", "Images per engine call", buckets=_BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("cdd_in_flight_requests", "Retrieval calls being served now", registry=r)
        self.gallery_items = Gauge("cdd_gallery_items", "Items in the gallery", registry=r)
        self.write_failures = Counter("cdd_write_failures", "Gallery changes the disk could not take",
                                      ["reason"], registry=r)
        self.build_info = Gauge("cdd_build_info", "Always 1; the labels describe the server",
                                ["bundle_sha256", "bundle_name", "backend", "version"], registry=r)
        self._http = None

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.request_duration.labels(method=method).observe(seconds)

    def observe_batch(self, size: int, compute_s: float, queue_s: list[float]) -> None:
        """A `serving.batcher.BatchObserver`: one engine call of ``size`` images."""
        self.batch_size.observe(size)
        self.compute_duration.observe(compute_s)
        for wait in queue_s:
            self.queue_duration.observe(wait)

    def track_gallery(self, count: Callable[[], int]) -> None:
        """Read the gallery size from ``count()`` at every scrape."""
        self.gallery_items.set_function(lambda: float(count()))

    def set_build_info(self, bundle_sha256: str, bundle_name: str, backend: str) -> None:
        self.build_info.labels(bundle_sha256=bundle_sha256, bundle_name=bundle_name, backend=backend,
                               version=package_version()).set(1)

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``http://host:port/metrics`` from a daemon thread; returns the bound port (port 0 = any
        free one). Raises OSError when the port cannot be bound."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint, if started. Idempotent."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
