"""The daemon's side of the response engine: Kafka publisher, outbox place, metrics.

:class:`ResponseRoute` is what the consumer loop hands findings to: the
playbook engine (``playbooks.engine.ResponseEngine``) plus the Kafka producer
its kafka actions and audit trail publish through (Kafka I/O stays in
``daemon/``). It is the loop's alerter, a :class:`playbooks.protocol.ResponseSide`:
``start()``, ``submit(finding)``, ``handle_slack_interaction(headers, body)``,
``stop(timeout)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from daemon.integrity import MAC_HEADER, RejectHook, header, record_mac, verify_mac
from daemon.kafka_io import client_config, new_producer
from daemon.settings import ConfigError, Settings
from detectors.findings import Finding
from playbooks.engine import ResponseEngine, playbook_warnings
from playbooks.model import PlaybookSet, load_playbooks
from playbooks.outbox import MEMORY
from playbooks.privacy import Pseudonymizer
from playbooks.redact import REDACTOR
from playbooks.state_files import UnsafeStateFile, private_dir

__all__ = ["KafkaPublisher", "PeerSeen", "ResponseRoute", "audit_context", "outbox_path"]

log = structlog.get_logger("mlwatchd.response")

#: How long one publish waits for the broker's acknowledgement.
_PUBLISH_TIMEOUT_S = 10.0


def audit_context(settings: Settings) -> list[str]:
    """What an audit record's MAC is bound to: its kind, consumer group and topic."""
    return ["audit/1", settings.kafka.group_id, settings.playbooks.audit_topic]


def _signing_key(settings: Settings) -> bytes | None:
    key = settings.state.signing_key
    return key.get_secret_value().encode() if key is not None else None


class KafkaPublisher:
    """``publish(topic, key, value, headers)``: raises unless the broker acknowledged.

    The producer is created on first use (and again after a failure), so an
    unreachable broker delays actions, which wait in the outbox, instead of
    failing the daemon's start. With ``state.signing_key`` set, records for
    the audit topic get a ``mlwatchd-mac`` header (HMAC-SHA256 of the value,
    bound to group and topic) that :class:`PeerSeen` checks.
    """

    def __init__(self, settings: Settings) -> None:
        self._kafka = settings.kafka
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._audit_topic = settings.playbooks.audit_topic
        self._audit_key = _signing_key(settings)
        self._audit_context = audit_context(settings)

    def __call__(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, bytes]]) -> None:
        if topic == self._audit_topic and self._audit_key is not None:
            mac = record_mac(self._audit_key, self._audit_context, value)
            headers = [*(h for h in headers if h[0] != MAC_HEADER), (MAC_HEADER, mac.encode())]
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


class PeerSeen:
    """Shares "this finding was taken" between replicas through the audit topic.

    Each replica's response engine keeps its outbox, incidents and seen
    finding ids in a local SQLite file. When a partition moves (a crash, a
    rebalance), the new owner replays from the last checkpoint and re-emits
    some findings with the same ids; its engine has not seen them and would
    alert again. Every engine audits ``finding_received`` (route, finding id)
    to the audit topic; this thread reads that topic from every partition,
    starting ``horizon_s`` back, and marks those ids seen in the local engine,
    so a re-emitted finding is recognised as a duplicate. Used with the Kafka
    state store (replicas on several hosts); replicas sharing a state
    directory share the SQLite file instead.

    Marking a finding seen suppresses its alert, so only records signed with
    ``state.signing_key`` for this group and topic are taken (verified before
    they are parsed); anything else on the topic is ignored and counted.
    """

    def __init__(self, settings: Settings, engine: ResponseEngine,
                 horizon_s: float | None = None, on_reject: RejectHook | None = None) -> None:
        key = _signing_key(settings)
        if key is None:
            raise ValueError("sharing seen findings needs state.signing_key")
        self._settings = settings
        self._engine = engine
        self._key = key
        self._context = audit_context(settings)
        self._on_reject = on_reject
        #: Audit records ignored because they were unsigned or did not verify.
        self.rejected = 0
        self._topic = settings.playbooks.audit_topic
        self._horizon_s = horizon_s if horizon_s is not None else settings.playbooks.retention
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peer-seen", daemon=True)
        self.marked = 0
        #: Set once the audit topic was read up to its end at least once.
        self.caught_up = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _consumer(self) -> KafkaConsumer:
        return KafkaConsumer(**client_config(self._settings.kafka), group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=200,
                             bootstrap_timeout_ms=5_000)

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        assigned: set[TopicPartition] = set()
        ends: dict[TopicPartition, int] = {}
        while not self._stopping.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                parts = consumer.partitions_for_topic(self._topic) or set()
                wanted = {TopicPartition(self._topic, p) for p in parts}
                if not wanted:
                    self.caught_up.set()  # nothing audited yet
                    self._stopping.wait(2.0)
                    continue
                if wanted != assigned:
                    self._assign(consumer, wanted, assigned)
                    assigned = wanted
                    ends = consumer.end_offsets(list(wanted))
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        self._take(record.value, record.headers)
                if not self.caught_up.is_set() and all(
                        consumer.position(tp) >= end for tp, end in ends.items()):
                    self.caught_up.set()
            except Exception as exc:  # keep trying: this only narrows duplicates
                log.warning("peer_seen_failed", error=f"{type(exc).__name__}: {exc}")
                if consumer is not None:
                    consumer.close()
                consumer, assigned = None, set()
                self._stopping.wait(2.0)
        if consumer is not None:
            consumer.close()

    def _assign(self, consumer: KafkaConsumer, wanted: set[TopicPartition],
                had: set[TopicPartition]) -> None:
        consumer.assign(list(wanted))
        since = int((time.time() - self._horizon_s) * 1000)
        new = [tp for tp in wanted if tp not in had]
        found = consumer.offsets_for_times({tp: since for tp in new})
        ends = consumer.end_offsets(new)
        for tp in new:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])

    def _take(self, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        tag = header(headers, MAC_HEADER)
        if tag is None or not verify_mac(self._key, self._context, value or b"", tag):
            self.rejected += 1
            if self._on_reject is not None:
                self._on_reject("audit", "unsigned" if tag is None else "bad_mac")
            if self.rejected & (self.rejected - 1) == 0:  # 1st, 2nd, 4th...: no log flood
                log.warning("audit_record_rejected", topic=self._topic, rejected=self.rejected,
                            reason="unsigned" if tag is None else "bad_mac")
            return
        try:
            record = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return
        if not isinstance(record, dict) or record.get("event") != "finding_received":
            return
        route, finding_id = record.get("route"), record.get("finding_id")
        if isinstance(route, str) and isinstance(finding_id, str) and \
                self._engine.mark_seen(route, finding_id, time.time()):
            self.marked += 1


def outbox_path(settings: Settings) -> Path:
    """An absolute ``playbooks.outbox_path`` as given; a relative one under ``state.dir``.

    Without ``state.dir`` the outbox is kept in memory (``playbooks.outbox.MEMORY``):
    never in a shared temp directory, where another local user could create
    the file first and write jobs into it, and where a later run with the
    same consumer group would take this run's findings as already alerted.
    """
    path = settings.playbooks.outbox_path
    if path.is_absolute():
        return path
    if not settings.state.dir:
        return Path(MEMORY)
    return Path(settings.state.dir) / path


def _configured_secrets(settings: Settings) -> list[str]:
    """Every secret value in the settings, for :data:`playbooks.redact.REDACTOR`."""
    values = [settings.slack.webhook_url, settings.slack.bot_token,
              settings.kafka.sasl_plain_password, settings.privacy.key,
              settings.state.signing_key, settings.playbooks.interactivity.signing_secret]
    return [v.get_secret_value() for v in values if v is not None]


def _pseudonymizer(settings: Settings) -> Pseudonymizer | None:
    privacy = settings.privacy
    if privacy.pseudonymize and privacy.key is not None:
        return Pseudonymizer(privacy.key.get_secret_value().encode())
    return None


class ResponseRoute:
    """The playbook engine with its publisher, started and stopped together.

    It is the daemon's :class:`playbooks.protocol.ResponseSide`.
    """

    def __init__(self, settings: Settings, playbooks: PlaybookSet, on_event: Any = None,
                 on_reject: RejectHook | None = None) -> None:
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
        self.peers = (PeerSeen(settings, self.engine, on_reject=on_reject)
                      if settings.state.store == "kafka" else None)

    def start(self) -> None:
        self.engine.start()
        if self.peers is not None:
            self.peers.start()

    def submit(self, finding: Finding) -> None:
        self.engine.submit(finding)

    def handle_slack_interaction(self, headers: Mapping[str, str], body: bytes
                                 ) -> tuple[int, bytes]:
        return self.engine.handle_slack_interaction(headers, body)

    def stop(self, timeout: float = 10.0) -> int:
        if self.peers is not None:
            self.peers.stop()
        try:
            return self.engine.stop(timeout)
        finally:
            self.publisher.close()


def build_response(settings: Settings, metrics: Any) -> ResponseRoute | None:
    """The response route of ``settings`` (None when playbooks are disabled).

    Raises :class:`ConfigError` (one line) when ``state.dir`` or the outbox
    file could have been written by someone else (a symlink, another owner,
    writable by group or others); ``state.dir`` is created 0700 if missing.
    """
    REDACTOR.add(*_configured_secrets(settings))
    try:
        if settings.state.dir:
            private_dir(settings.state.dir)
        if not settings.playbooks.enabled:
            return None
        playbooks = load_playbooks(settings.playbooks.dir)
        path = outbox_path(settings)
        if str(path) == MEMORY:
            log.warning("playbook_outbox_in_memory",
                        detail="state.dir is not set: pending actions, dedup and approvals "
                               "are lost when the daemon stops; set state.dir to keep them")
        return ResponseRoute(
            settings, playbooks,
            on_event=lambda name, _fields: metrics.playbook_events.labels(name).inc(),
            on_reject=lambda record, reason: metrics.internal_rejected.labels(record, reason).inc(),
        )
    except UnsafeStateFile as exc:
        raise ConfigError([str(exc)]) from None
