"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ITEM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("rewardserve_requests", "HTTP requests", ["route", "status"], registry=r)
        self.request_seconds = Histogram(
            "rewardserve_request_seconds", "HTTP request latency", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_items = Histogram(
            "rewardserve_batch_items", "items per forward", ["backbone"], buckets=_ITEM_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "rewardserve_batch_tokens", "padded tokens per forward", ["backbone"], buckets=_TOKEN_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "rewardserve_queue_wait_seconds",
            "time an item waits before its forward",
            ["backbone"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "rewardserve_forward_seconds", "forward pass time", ["backbone"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.padding_ratio = Histogram(
            "rewardserve_padding_ratio",
            "pad tokens / padded tokens per forward",
            ["backbone"],
            buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
            registry=r,
        )
        self.queue_depth_tokens = Gauge(
            "rewardserve_queue_tokens", "tokens waiting for a forward", ["backbone"], registry=r
        )
        self.queue_depth_items = Gauge(
            "rewardserve_queue_items", "items waiting for a forward", ["backbone"], registry=r
        )
        self.reference_fallbacks = Counter(
            "rewardserve_reference_fallbacks",
            "items of LSC models scored without a reference of their own, by the "
            "default used instead (set_default, config_default)",
            ["model", "source"],
            registry=r,
        )
        self.items_scored = Counter("rewardserve_items_scored", "items scored", ["model"], registry=r)
        self.rejected = Counter(
            "rewardserve_rejected_items", "items rejected because the queue was full", ["backbone"], registry=r
        )
        self.dropped = Counter(
            "rewardserve_dropped_items", "items dropped before their forward (client gone)", ["backbone"], registry=r
        )
        self.forward_errors = Counter(
            "rewardserve_forward_errors", "forward passes that raised", ["backbone"], registry=r
        )

        self.check_seconds = Histogram(
            "rewardserve_check_seconds",
            "time one verifier check ran in its worker process",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.check_timeouts = Counter(
            "rewardserve_check_timeouts", "verifier checks stopped at their timeout (scored 0)", ["model"], registry=r
        )
        self.check_failures = Counter(
            "rewardserve_check_failures",
            "verifier checks that raised (error), killed their worker (crashed), returned a score outside "
            "[0, 1] (out_of_range) or refused an input they would not evaluate (refused: math, an answer too large)",
            ["model", "reason"],
            registry=r,
        )

    def checks_loaded(self, models: list[str]) -> None:
        """Give every check model's series a sample (0) once its verifier backbone is loaded."""
        for m in models:
            self.check_seconds.labels(m)
            self.check_timeouts.labels(m)
            for reason in ("error", "crashed", "out_of_range", "refused"):
                self.check_failures.labels(m, reason)

    def backbone_loaded(self, backbone: str, models: list[str]) -> None:
        """Give every per-backbone and per-model series a sample (0) as soon as the backbone is
        loaded: the HPA skips scale-down while a metric it reads is missing, and dashboards show gaps."""
        for gauge in (self.queue_depth_tokens, self.queue_depth_items):
            gauge.labels(backbone).set(0)
        for metric in (
            self.batch_items,
            self.batch_tokens,
            self.queue_wait,
            self.forward_seconds,
            self.padding_ratio,
            self.rejected,
            self.dropped,
            self.forward_errors,
        ):
            metric.labels(backbone)
        for m in models:
            self.items_scored.labels(m)
