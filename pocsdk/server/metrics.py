"""Prometheus metrics for the compression service, on a per-app registry.

A registry per app (not the process-global default) lets tests and embedders run several
apps in one process without duplicate-metric errors. GPU memory is reported only when
torch is already imported and CUDA is available: the metrics endpoint never imports torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _GpuMemory(Collector):
    """Allocated and reserved CUDA memory per device, if torch is loaded and sees a GPU."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if not torch.cuda.is_available() or not torch.cuda.is_initialized():
                return
            allocated = GaugeMetricFamily("pocsdk_gpu_memory_allocated_bytes", "CUDA memory allocated by tensors",
                                          labels=["device"])
            reserved = GaugeMetricFamily("pocsdk_gpu_memory_reserved_bytes", "CUDA memory reserved by the caching "
                                         "allocator", labels=["device"])
            for i in range(torch.cuda.device_count()):
                allocated.add_metric([str(i)], float(torch.cuda.memory_allocated(i)))
                reserved.add_metric([str(i)], float(torch.cuda.memory_reserved(i)))
        except Exception:  # a metrics scrape must never fail because of the GPU
            return
        yield allocated
        yield reserved


class ServiceMetrics:
    """The service's metrics; ``render()`` gives the Prometheus text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("pocsdk_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.request_seconds = Histogram("pocsdk_request_seconds", "HTTP request latency", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.compress_seconds = Histogram("pocsdk_compress_seconds", "Compression time per input (queue excluded)",
                                          ["compressor"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("pocsdk_queue_seconds", "Time an input waited before its batch ran",
                                       ["compressor"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("pocsdk_batch_size", "Inputs per batched call", ["compressor"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.tokens_in = Counter("pocsdk_tokens_in", "Original tokens of compressed inputs", ["compressor"],
                                 registry=r)
        self.tokens_out = Counter("pocsdk_tokens_out", "Compressed tokens returned", ["compressor"], registry=r)
        self.queue_depth = Gauge("pocsdk_queue_depth", "Inputs admitted and not yet answered", ["compressor"],
                                 registry=r)
        self.in_flight = Gauge("pocsdk_in_flight", "Inputs admitted service-wide (waiting or running)", registry=r)
        r.register(_GpuMemory())

    def track_queue(self, compressor: str, depth: Callable[[], float]) -> None:
        """Report a compressor's queue depth from a callable, read at scrape time."""
        self.queue_depth.labels(compressor).set_function(depth)

    def observe_tokens(self, compressor: str, tokens_in: int, tokens_out: int) -> None:
        """Tokens of a result returned to a client (not of inputs whose request failed as a whole)."""
        self.tokens_in.labels(compressor).inc(tokens_in)
        self.tokens_out.labels(compressor).inc(tokens_out)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
