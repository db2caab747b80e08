"""Prometheus metrics of one server instance, in a registry of its own (tests build many apps)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from server.batcher import BatchStats

_SECONDS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
_TEXTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServerMetrics:
    def __init__(self) -> None:
        self._request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.info = Info("embench_server", "what this server runs", registry=r)
        self.requests = Counter(
            "embench_server_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.errors = Counter(
            "embench_server_errors",
            "requests answered with an error, by endpoint and error type",
            ["endpoint", "type"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "embench_server_request_seconds",
            "time in the handler, body read to response built",
            ["endpoint"],
            buckets=_SECONDS,
            registry=r,
        )
        self.tokenization_seconds = Histogram(
            "embench_server_tokenization_seconds",
            "tokenization time per request",
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "embench_server_queue_seconds",
            "wait from enqueue to the start of the request's first batch",
            buckets=_SECONDS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "embench_server_inference_seconds",
            "runtime time per batch (pad, run, pool, normalize)",
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            "embench_server_batch_size", "texts per batch", buckets=_TEXTS, registry=r
        )
        self.batch_tokens = Histogram(
            "embench_server_batch_tokens",
            "padded tokens per batch (texts x longest)",
            buckets=_TOKENS,
            registry=r,
        )
        self.batch_padding_ratio = Histogram(
            "embench_server_batch_padding_ratio",
            "padded tokens / real tokens per batch",
            buckets=(1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=r,
        )
        self.batch_gather_seconds = Histogram(
            "embench_server_batch_gather_seconds",
            "how long a free worker waited for more texts before taking a batch's window",
            buckets=(0.0, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05),
            registry=r,
        )
        self.texts = Counter("embench_server_texts", "texts embedded", registry=r)
        self.tokens = Counter("embench_server_tokens", "tokens embedded (unpadded)", registry=r)
        self.truncated = Counter(
            "embench_server_truncated_texts", "texts cut to max_seq_length", registry=r
        )
        self.rejected = Counter(
            "embench_server_rejected", "requests refused with 429 (queue full)", registry=r
        )
        self.disconnected = Counter(
            "embench_server_disconnected_requests",
            "requests whose client went away before the answer (their work is dropped)",
            registry=r,
        )
        self.queue_depth = Gauge(
            "embench_server_queue_depth", "texts waiting for inference", registry=r
        )
        self.inflight = Gauge(
            "embench_server_inflight_requests", "requests waiting for embeddings", registry=r
        )
        self.ready = Gauge(
            "embench_server_ready", "1 once the model is loaded and warm", registry=r
        )
        self.model_load_seconds = Gauge(
            "embench_server_model_load_seconds", "time to load the model", registry=r
        )

    def track_queue(self, depth: Callable[[], float], inflight: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)
        self.inflight.set_function(inflight)

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """Count an answered request (label children cached: this runs on every request)."""
        key = (endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(endpoint, str(status)),
                self.request_seconds.labels(endpoint),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, stats: BatchStats) -> None:
        # Texts and tokens are counted per batch, off the event loop.
        self.texts.inc(stats.texts)
        self.tokens.inc(stats.real_tokens)
        self.batch_size.observe(stats.texts)
        self.batch_tokens.observe(stats.padded_tokens)
        self.inference_seconds.observe(stats.seconds)
        self.batch_gather_seconds.observe(stats.gathered_s)
        if stats.real_tokens:
            self.batch_padding_ratio.observe(stats.padded_tokens / stats.real_tokens)
