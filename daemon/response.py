"""The daemon's side of the response engine: Kafka publisher, outbox place, metrics.

:class:`ResponseRoute` is what the consumer loop hands findings to: the
playbook engine (``playbooks.engine.ResponseEngine``) plus the Kafka producer
its kafka actions and audit trail publish through (Kafka I/O stays in
``daemon/``). It has the loop's alerter interface: ``start()``,
``submit(finding)``, ``stop(timeout)``.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import structlog
from kafka import KafkaProducer

from daemon.kafka_io import new_producer
from daemon.settings import Settings
from detectors.findings import Finding
from playbooks.engine import ResponseEngine, playbook_warnings
from playbooks.model import PlaybookSet, load_playbooks
from playbooks.privacy import Pseudonymizer

__all__ = ["KafkaPublisher", "ResponseRoute", "outbox_path"]

log = structlog.get_logger("mlwatchd.response")

#: How long one publish waits for the broker's acknowledgement.
_PUBLISH_TIMEOUT_S = 10.0


class KafkaPublisher:
    """``publish(topic, key, value, headers)``: raises unless the broker acknowledged.

    The producer is created on first use (and again after a failure), so an
    unreachable broker delays actions, which wait in the outbox, instead of
    failing the daemon's start.
    """

    def __init__(self, settings: Settings) -> None:
        self._kafka = settings.kafka
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def __call__(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, bytes]]) -> None:
        with self._lock:
            if self._producer is None:
                self._producer = new_producer(self._kafka)
            producer = self._producer
        try:
            producer.send(topic, key=key, value=value, headers=headers).get(
                timeout=_PUBLISH_TIMEOUT_S)
        except Exception:
            with self._lock:
                if self._producer is producer:
                    self._producer = None
            producer.close(timeout=1)
            raise

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=10)


def outbox_path(settings: Settings) -> Path:
    """An absolute ``playbooks.outbox_path`` as given; a relative one under ``state.dir``.

    Without ``state.dir`` it goes to the temp directory, named after the
    consumer group: it still survives a daemon restart, not a machine's.
    """
    path = settings.playbooks.outbox_path
    if path.is_absolute():
        return path
    base = Path(settings.state.dir) if settings.state.dir else Path(tempfile.gettempdir())
    if not settings.state.dir:
        path = Path(f"{settings.kafka.group_id}-{path.name}")
    base.mkdir(parents=True, exist_ok=True)
    return base / path


def _pseudonymizer(settings: Settings) -> Pseudonymizer | None:
    privacy = settings.privacy
    if privacy.pseudonymize and privacy.key is not None:
        return Pseudonymizer(privacy.key.get_secret_value().encode())
    return None


class ResponseRoute:
    """The playbook engine with its publisher, started and stopped together."""

    def __init__(self, settings: Settings, playbooks: PlaybookSet, on_event: Any = None) -> None:
        self.publisher = KafkaPublisher(settings)
        pb_settings = settings.playbooks.model_copy(update={"outbox_path": outbox_path(settings)})
        self.engine = ResponseEngine(
            playbooks, pb_settings,
            slack=settings.slack if settings.slack.enabled else None,
            pseudonymizer=_pseudonymizer(settings),
            publish=self.publisher,
            on_event=on_event,
        )
        for line in playbook_warnings(playbooks, settings.playbooks,
                                      slack_configured=settings.slack.enabled):
            log.warning("playbook_warning", detail=line)

    def start(self) -> None:
        self.engine.start()

    def submit(self, finding: Finding) -> None:
        self.engine.submit(finding)

    def handle_slack_interaction(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        return self.engine.handle_slack_interaction(headers, body)

    def stop(self, timeout: float = 10.0) -> int:
        try:
            return self.engine.stop(timeout)
        finally:
            self.publisher.close()


def build_response(settings: Settings, metrics: Any) -> ResponseRoute | None:
    """The response route of ``settings`` (None when playbooks are disabled)."""
    if not settings.playbooks.enabled:
        return None
    playbooks = load_playbooks(settings.playbooks.dir)
    return ResponseRoute(
        settings, playbooks,
        on_event=lambda name, _fields: metrics.playbook_events.labels(name).inc(),
    )
