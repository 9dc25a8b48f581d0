"""What the daemon opens before its loop: internal topics, the Kafka state store, the
context table, and its HTTP listeners (status pages, Slack's callbacks)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import TypeVar

import structlog

from daemon.context import KafkaContextTable
from daemon.integrity import RejectHook
from daemon.kafka_io import Consumer, connect, ensure_topics
from daemon.metrics import Health, Metrics
from daemon.settings import Settings
from daemon.state import KafkaStateStore
from daemon.status_server import StatusServer
from playbooks.protocol import ResponseSide

__all__ = ["Retrier", "open_internal", "status_servers"]

log = structlog.get_logger("mlwatchd.runtime")

T = TypeVar("T")


class Retrier:
    """Retries making a Kafka client until it works or the daemon is asked to stop."""

    def __init__(self, stopping: threading.Event, backoff_max_s: float, metrics: Metrics) -> None:
        self.stopping = stopping
        self.backoff_max_s = backoff_max_s
        self.metrics = metrics

    def __call__(self, make: Callable[[], T], what: str) -> T | None:
        return connect(make, what, self.stopping, self.backoff_max_s,
                       self.metrics.broker_reconnects.inc)


def open_internal(
    settings: Settings, consumer: Consumer, retried: Retrier, *, inputs: Collection[str],
    repartition_topic: str | None, context: KafkaContextTable | None, on_reject: RejectHook,
) -> tuple[bool, KafkaStateStore | None]:
    """Create the repartition, state and context topics if needed; start the context
    table and open the Kafka state store (when ``state.store`` is ``kafka``).

    Returns (False, None) if asked to stop first, else (True, the Kafka store or None).
    """
    state, kafka = settings.state, settings.kafka
    if repartition_topic is None and state.store != "kafka" and context is None:
        return True, None
    counts = [len(consumer.partitions_for_topic(t) or ()) for t in inputs]
    topic = settings.topics.inference
    inference = len(consumer.partitions_for_topic(topic) or ()) if topic in inputs else 0
    wanted: dict[str, tuple[int, dict[str, str]]] = {}
    if context is not None:
        wanted[context.topic] = (1, {"cleanup.policy": "compact"})
    if repartition_topic is not None:
        wanted[repartition_topic] = (inference or max(counts) or 1, {})
    if state.store == "kafka":
        wanted[state.topic] = (2 * (max(counts) or 1), {"cleanup.policy": "compact"})
    if retried(lambda: ensure_topics(kafka, wanted), "admin") is None:
        return False, None
    if context is not None:
        if not context.signed:
            log.warning("context_unsigned", topic=context.topic,
                        hint="set state.signing_key so that context records are signed")
        if retried(context.start, "context table") is None:
            return False, None
    if state.store != "kafka":
        return True, None
    assert state.signing_key is not None
    key = state.signing_key.get_secret_value().encode()
    store = retried(lambda: KafkaStateStore(kafka, state.topic, kafka.group_id, key,
                                            state.chunk_bytes, on_reject=on_reject),
                    "state store")
    return store is not None, store


def status_servers(settings: Settings, metrics: Metrics, health: Health,
                   response: ResponseSide | None) -> tuple[StatusServer | None,
                                                           StatusServer | None]:
    """(status server, interactivity listener), each None when not configured (not started).

    Slack's callbacks go to their own listener when ``interactivity_port`` is
    set, else to the status server.
    """
    obs = settings.observability
    routes = {}
    interactivity = settings.playbooks.interactivity
    if interactivity.enabled and response is not None:
        routes[interactivity.path] = response.handle_slack_interaction
    cap, timeout = obs.http_max_connections, obs.http_request_timeout_s
    interactions = None
    if obs.interactivity_port is not None and routes:
        interactions = StatusServer(
            metrics, health, obs.interactivity_host or obs.http_host,
            obs.interactivity_port, routes, status_pages=False, name="interactivity",
            max_connections=cap, max_per_client=max(1, cap // 4), request_timeout_s=timeout)
        routes = {}
    status = None
    if obs.http_port is not None:
        status = StatusServer(metrics, health, obs.http_host, obs.http_port, routes,
                              max_connections=cap, max_per_client=max(1, cap // 4),
                              request_timeout_s=timeout)
    return status, interactions
