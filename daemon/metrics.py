"""Prometheus metrics and the health state that /healthz and /readyz report.

The HTTP server that serves them (and Slack's interactivity clicks) is
:mod:`daemon.status_server`.
"""

from __future__ import annotations

import time

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from detectors.base import Detector
from detectors.events import Event

__all__ = ["DetectorErrors", "Health", "Metrics"]

log = structlog.get_logger("mlwatchd.metrics")


class Metrics:
    """The daemon's metrics, on a registry of its own (tests can make several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("mlwatchd_events_consumed_total", "Events consumed",
                              ["topic"], registry=r)
        self.bad_events = Counter("mlwatchd_decode_errors_total",
                                  "Messages that were not valid events", ["topic", "reason"],
                                  registry=r)
        self.dlq = Counter("mlwatchd_dlq_messages_total",
                           "Messages written to the dead-letter topic",
                           registry=r)
        self.findings = Counter("mlwatchd_findings_total", "Findings emitted",
                                ["detector", "severity"], registry=r)
        self.detector_errors = Counter("mlwatchd_detector_errors_total",
                                       "Exceptions raised by detectors (event skipped for that "
                                       "detector)", ["detector"], registry=r)
        self.batch_seconds = Histogram(
            "mlwatchd_batch_processing_seconds", "Time to process one polled batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.batch_events = Histogram(
            "mlwatchd_batch_events", "Events per polled batch",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000), registry=r)
        self.commits = Counter("mlwatchd_commits_total", "Offset commits", ["result"], registry=r)
        self.lag = Gauge("mlwatchd_consumer_lag", "Highwater minus committed position",
                         ["topic", "partition"], registry=r)
        self.assigned = Gauge("mlwatchd_assigned_partitions", "Partitions assigned", registry=r)
        self.repartitioned = Counter("mlwatchd_repartitioned_total",
                                     "Inference events forwarded to the repartition topic",
                                     registry=r)
        self.repartition_duplicates = Counter(
            "mlwatchd_repartition_duplicates_total",
            "Repartitioned copies skipped because the model stage had seen them", registry=r)
        self.produce_retries = Counter("mlwatchd_produce_retries_total",
                                       "Retries of findings/DLQ produce after a broker error",
                                       registry=r)
        self.refused = Counter("mlwatchd_produce_refused_total",
                               "Records the producer or broker refused for good (too large, "
                               "invalid), not retried; outcome truncated: a cut-down dead "
                               "letter went instead, dropped: nothing did",
                               ["topic", "outcome"], registry=r)
        self.broker_reconnects = Counter("mlwatchd_broker_connect_failures_total",
                                         "Failed attempts to reach the Kafka cluster", registry=r)
        self.playbook_events = Counter("mlwatchd_playbook_events_total",
                                       "Response engine events (action_delivered, action_failed, "
                                       "incident_opened, ...)", ["event"], registry=r)
        self.internal_rejected = Counter(
            "mlwatchd_internal_records_rejected_total",
            "Internal records (checkpoints, state manifests, audit records) refused: "
            "unsigned, bad MAC, malformed, rolled back", ["record", "reason"], registry=r)
        self.state_restore_failed = Counter(
            "mlwatchd_state_restore_failed_total",
            "Saved detector states that could not be restored (another state version, "
            "unknown type, corrupt); that detector started afresh and relearns",
            ["detector", "reason"], registry=r)
        self.detector_gauge = Gauge("mlwatchd_detector_state", "Detector state gauges "
                                    "(entities tracked, evictions, ...)",
                                    ["detector", "stat"], registry=r)
        self.state_evictions = Counter(
            "mlwatchd_state_evictions_total",
            "Per-entity detector state evicted (least recently seen) by a detector's cap or "
            "the state.max_state_mb budget", ["detector"], registry=r)
        #: Detector name -> evictions already counted (the pipeline's tally only grows).
        self.evictions_seen: dict[str, int] = {}
        self.format_gauge = Gauge("mlwatchd_format_state", "Input format counters per topic "
                                  "(e.g. KServe requests whose response never came)",
                                  ["topic", "format", "stat"], registry=r)

    def count_evictions(self, totals: dict[str, int]) -> None:
        """Advance ``mlwatchd_state_evictions_total`` to the pipeline's eviction tally."""
        for name, total in totals.items():
            new = total - self.evictions_seen.get(name, 0)
            if new > 0:
                self.state_evictions.labels(name).inc(new)
                self.evictions_seen[name] = total

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DetectorErrors:
    """The pipeline's ``on_error``: counts a detector's failures and logs the 1st,
    2nd, 4th, 8th ... of each detector (visible, but no log flood)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.seen: dict[str, int] = {}

    def __call__(self, detector: Detector, event: Event | None, exc: Exception) -> None:
        self.metrics.detector_errors.labels(detector.name).inc()
        seen = self.seen[detector.name] = self.seen.get(detector.name, 0) + 1
        if seen & (seen - 1) == 0:
            log.error("detector_failed", detector=detector.name, occurrences=seen,
                      error=f"{type(exc).__name__}: {exc}")


class Health:
    """What /healthz and /readyz report: the loop turns, and it has partitions."""

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self.last_turn = time.monotonic()
        self.ready = False
        self.reason = "starting"

    def beat(self) -> None:
        self.last_turn = time.monotonic()

    def live(self) -> tuple[bool, str]:
        idle = time.monotonic() - self.last_turn
        if idle > self.stall_after_s:
            return False, f"consumer loop stalled for {idle:.0f}s"
        return True, "ok"
