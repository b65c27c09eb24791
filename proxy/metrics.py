"""Prometheus metrics for one app: a private registry, request observations, and
values read at scrape time (recorder, adapter, live uplift).

Per request the proxy only bumps prometheus_client counters and histograms; anything
that needs the store (the uplift) is computed at scrape time and cached, so a request
never waits on the database for metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from proxy.calls import Call
from proxy.recorder import Recorder

log = logging.getLogger("tactician.metrics")

# Paths outside this set are folded into "other": the catch-all route accepts any
# /v1/* path, and one label value per path would grow the series without bound.
ENDPOINTS = frozenset({
    "/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings",
    "/v1/messages", "/v1/models",
})
# Upstream calls take seconds to minutes; the proxy's own share and the hint are
# milliseconds (the hint budget is 150 ms by default).
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1)
UPLIFT_TTL_S = 10.0

ArmReport = Callable[[], dict[str, Any]]


def endpoint_label(path: str) -> str:
    return path if path in ENDPOINTS else "other"


class Metrics:
    """The app's registry and the metrics observed per request."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("tactician_requests", "Proxied requests by endpoint and "
                                "HTTP status sent to the client", ["endpoint", "status"],
                                registry=reg)
        self.total = Histogram("tactician_request_seconds", "Total time a proxied request "
                               "spent in the proxy", ["endpoint"], buckets=SLOW_BUCKETS,
                               registry=reg)
        self.upstream = Histogram("tactician_upstream_seconds", "Time waiting on the "
                                  "upstream", ["endpoint"], buckets=SLOW_BUCKETS, registry=reg)
        self.overhead = Histogram("tactician_overhead_seconds", "Proxy overhead: total minus "
                                  "upstream minus hint", buckets=FAST_BUCKETS, registry=reg)
        self.hint = Histogram("tactician_hint_seconds", "Time spent deciding the hint",
                              buckets=FAST_BUCKETS, registry=reg)
        self.hints_served = Counter("tactician_hints_served", "Hints injected, by source",
                                    ["source"], registry=reg)
        self.hints_skipped = Counter("tactician_hints_skipped", "Guided-endpoint calls sent "
                                     "without a hint, by reason", ["reason"], registry=reg)
        self.outcomes = Counter("tactician_outcomes_received", "Outcomes accepted by the "
                                "webhook", registry=reg)
        self.record_errors = Counter("tactician_record_errors", "Finished calls that could "
                                     "not be handed to the recorder", registry=reg)
        ProcessCollector(registry=reg)

    def observe(self, call: Call) -> None:
        """Count a finished call. Never raises: metrics must not break serving."""
        try:
            self._observe(call)
        except Exception:
            log.exception("could not observe call %s", call.request_id)

    def _observe(self, call: Call) -> None:
        total = time.perf_counter() - call.started
        endpoint = endpoint_label(call.endpoint)
        self.requests.labels(endpoint, str(call.status or 0)).inc()
        self.total.labels(endpoint).observe(total)
        g = call.guidance
        hint_s = float(g.get("hint_latency_ms") or 0.0) / 1000
        if "hint_latency_ms" in g:  # control-arm calls never ask for a hint
            self.hint.observe(hint_s)
        if "arm" in g:
            if g.get("hint_text"):
                self.hints_served.labels(str(g.get("hint_source"))).inc()
            else:
                self.hints_skipped.labels(str(g.get("hint_skip_reason"))).inc()
        if call.upstream_start is not None and call.upstream_end is not None:
            upstream = call.upstream_end - call.upstream_start
            self.upstream.labels(endpoint).observe(upstream)
            self.overhead.observe(max(0.0, total - upstream - hint_s))

    def track(self, recorder: Recorder, adapter_version: Callable[[], str | None],
              arm_report: ArmReport) -> None:
        """Add the values read at scrape time."""
        self.registry.register(_StateCollector(recorder, adapter_version, arm_report))

    def render(self) -> bytes:
        """The exposition text. May query the store (cached uplift): call off the loop."""
        return generate_latest(self.registry)


@dataclass
class _Cached:
    """The last arm report and when it was computed."""

    value: dict[str, Any] | None = None
    at: float = float("-inf")


class _StateCollector:
    def __init__(self, recorder: Recorder, adapter_version: Callable[[], str | None],
                 arm_report: ArmReport) -> None:
        self.recorder = recorder
        self.adapter_version = adapter_version
        self.arm_report = arm_report
        self.cache = _Cached()

    def describe(self) -> list[Metric]:
        # Registration must not run collect(): that would query the store at start-up.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._recorder()
        yield InfoMetricFamily("tactician_adapter", "The LoRA adapter serving hints",
                               value={"version": self.adapter_version() or "none"})
        report = self._report()
        if report is not None:
            yield from _uplift(report)

    def _recorder(self) -> Iterator[Metric]:
        stats = self.recorder.stats
        yield GaugeMetricFamily("tactician_recorder_queue_depth", "Rows waiting in the "
                                "recorder's memory queue", value=self.recorder.depth)
        for name, value, doc in (
            ("written", stats.written, "Rows written to the store"),
            ("spilled", stats.spilled, "Rows spilled to disk because the queue was full"),
            ("dropped", stats.dropped, "Rows lost: queue full and the spill write failed"),
            ("write_errors", stats.write_errors, "Rows the store rejected"),
        ):
            yield CounterMetricFamily(f"tactician_recorder_{name}", doc, value=value)

    def _report(self) -> dict[str, Any] | None:
        now = time.monotonic()
        if now - self.cache.at >= UPLIFT_TTL_S:
            try:
                self.cache = _Cached(self.arm_report(), now)
            except Exception:
                log.exception("live uplift unavailable")
                self.cache = _Cached(None, now)
        return self.cache.value


def _uplift(report: dict[str, Any]) -> Iterator[Metric]:
    episodes = GaugeMetricFamily("tactician_arm_episodes", "Episodes with an outcome, "
                                 "by arm", labels=["arm"])
    rate = GaugeMetricFamily("tactician_arm_success_rate", "Episode success rate, by arm",
                             labels=["arm"])
    for arm, stats in sorted(report["arms"].items()):
        episodes.add_metric([arm], stats["episodes"])
        if stats["success_rate"] is not None:
            rate.add_metric([arm], stats["success_rate"])
    yield episodes
    yield rate
    uplift = report["uplift"]
    if uplift["uplift"] is None:
        return
    yield GaugeMetricFamily("tactician_uplift", "Relative success uplift of guided over "
                            "control episodes", value=uplift["uplift"])
    low, high = uplift["ci95"]
    yield GaugeMetricFamily("tactician_uplift_ci_low", "Uplift 95% CI, lower bound",
                            value=low)
    yield GaugeMetricFamily("tactician_uplift_ci_high", "Uplift 95% CI, upper bound",
                            value=high)
