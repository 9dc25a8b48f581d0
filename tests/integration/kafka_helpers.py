"""Small real-client helpers for integration tests (no mocks)."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from daemon.runtime import Daemon
from daemon.settings import Settings
from detectors.findings import Entity, Finding, Source

_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"



def make_settings(broker, partitions: int = 1, **overrides: Any) -> Settings:
    """Settings with fresh topics and group, test-length timeouts, status server off."""
    suffix = unique("t")
    topics = {
        "inference": f"ml.inference.{suffix}",
        "audit": f"ml.audit.{suffix}",
        "access": f"ml.access.{suffix}",
        "findings": f"mlwatchd.findings.{suffix}",
        "dlq": f"mlwatchd.dlq.{suffix}",
    }
    broker.create_topics(topics.values(), partitions=partitions)
    data: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "group_id": f"mlwatchd-{suffix}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_records": 500,
            "poll_timeout_ms": 200,
            "reconnect_backoff_max_s": 2,
        },
        "topics": topics,
        "observability": {"http_port": None},
        "detectors": {
            "volume.principal_rate": {"params": {"warmup_buckets": 3, "min_count": 30}},
        },
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    return Settings(**data)


def produce(broker, topic: str, values: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    n = 0
    for key, value in values:
        producer.send(topic, key=key, value=value)
        n += 1
    producer.flush()
    producer.close()
    return n


def read_all(broker, topic: str, expect: int, timeout_s: float = 30.0,
             settle_s: float = 1.0) -> list[Any]:
    """Every message of ``topic`` (all partitions): waits for ``expect``, then ``settle_s`` more."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    parts = consumer.partitions_for_topic(topic) or {0}
    consumer.assign([TopicPartition(topic, p) for p in parts])
    consumer.seek_to_beginning()
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    settle_until = None
    while time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=200).values():
            out.extend(msgs)
        if len(out) >= expect:
            settle_until = settle_until or time.monotonic() + settle_s
            if time.monotonic() >= settle_until:
                break
    consumer.close()
    return out


def committed(broker, group: str) -> dict[tuple[str, int], int]:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        offsets = admin.list_group_offsets(group)
    finally:
        admin.close()
    table = offsets.get(group, offsets) if isinstance(offsets, dict) else offsets
    return {(tp.topic, tp.partition): meta.offset for tp, meta in table.items()}


def wait_for(predicate, timeout_s: float = 30.0, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


class DaemonThread:
    """Runs a Daemon in a background thread (in-process: same code as ``mlwatchd run``)."""

    def __init__(self, settings: Settings, alerter: Any = None, metrics: Any = None) -> None:
        self.daemon = Daemon(settings, alerter=alerter, metrics=metrics)
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = self.daemon.run()

    def __enter__(self) -> DaemonThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.daemon.request_stop()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "daemon did not stop"


def inference(ts: float, principal: str, i: int, model: str = "fraud") -> bytes:
    return orjson.dumps({
        "ts": ts, "model_id": model, "request_id": f"{principal}-{i}", "principal": principal,
        "features": [0.1 * (i % 7), 1.0, 2.0], "prediction": i % 2,
        "probabilities": [0.3, 0.7],
    })


#: The response engine's cross-replica tests: every flood finding to Slack, once per id.
FLOOD_CHAT_PLAYBOOK = """
actions:
  chat: {type: slack, params: {}}
routes:
  - name: floods
    match: {kinds: [denial_of_service]}
    actions: [chat]
    dedup: {key: "{finding_id}", window: 30m}
"""


def write_flood_playbook(tmp_path: Path) -> Path:
    """``tmp_path/pb`` holding :data:`FLOOD_CHAT_PLAYBOOK`; the folder for ``playbooks.dir``."""
    folder = tmp_path / "pb"
    folder.mkdir()
    (folder / "chat.yaml").write_text(FLOOD_CHAT_PLAYBOOK)
    return folder


def flood_finding(i: int, t0: float = 1_767_225_600.0) -> Finding:
    """Finding ``i`` of :data:`FLOOD_CHAT_PLAYBOOK`'s kind: caller-``i`` flooding model fraud."""
    return Finding.build(detector="volume.principal_rate", kind="denial_of_service",
                         severity="high", entity=Entity("principal", f"caller-{i}"),
                         model_id="fraud", summary="flood", evidence={"count": 100 + i},
                         atlas=["AML.T0029"], event_ts=t0 + i,
                         sources=[Source("ml.inference", 0, i)])


def replica_settings(broker, slack: Any, group: str, state: dict[str, Any], playbooks: Path,
                     audit: str) -> Settings:
    """One replica of a deployment (consumer ``group``) posting to the fake ``slack``."""
    return make_settings(
        broker, kafka={"group_id": group}, state=state,
        slack={"bot_token": slack.token, "channel": "#ml-sec",
               "api_base_url": slack.api_base_url},
        playbooks={"dir": str(playbooks), "audit_topic": audit})
