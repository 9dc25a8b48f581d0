"""Internal records on a real broker: refused unless a key holder wrote them for this place.

The attacker here can write to the state and audit topics (a missing ACL) but
does not hold ``state.signing_key``.
"""

from __future__ import annotations

import zlib

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from daemon.integrity import MAC_HEADER, record_mac
from daemon.lab.fake_slack import FakeSlack
from daemon.metrics import Metrics
from daemon.response import build_response
from daemon.state import Checkpoint, KafkaStateStore
from tests.integration.kafka_helpers import (
    DaemonThread,
    committed,
    flood_finding,
    inference,
    make_settings,
    produce,
    replica_settings,
    unique,
    wait_for,
    write_flood_playbook,
)

pytestmark = pytest.mark.integration

KEY = "0123456789abcdef-state-key"
T0 = 1_767_225_600.0


class _Rejections:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, record: str, reason: str) -> None:
        self.seen.append((record, reason))


@pytest.fixture
def store_settings(broker):
    settings = make_settings(broker)
    topic = unique("state")
    broker.create_topics([topic], partitions=2)
    return settings, topic


def _store(settings, topic, on_reject=None):
    return KafkaStateStore(settings.kafka, topic, settings.kafka.group_id, KEY.encode(), 1024,
                           on_reject=on_reject)


def _checkpoint(partition, size, tag):
    return Checkpoint(partition, {"ml.inference": size}, {"det": ("fp", bytes([tag]) * size)})


def _records(broker, tp):
    """Every record of one topic partition, oldest first."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.highwater(tp)
    out = []
    while end is None or consumer.position(tp) < end:
        out.extend(consumer.poll(timeout_ms=500).get(tp, []))
        end = consumer.highwater(tp)
    consumer.close()
    return out


def _write(broker, topic, partition, records):
    """Produce (key, value, headers) records to one partition, in order."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for key, value, headers in records:
        producer.send(topic, key=key, value=value, headers=headers,
                      partition=partition).get(10)
    producer.close()


def _state_partition(key: str, partitions: int = 2) -> int:
    return zlib.crc32(key.encode()) % partitions


# -- item 3: crafted manifests are skipped and counted, never parsed ----------------------

_CRAFTED = [
    b"{}",
    orjson.dumps({"v": 2, "gen": "7", "slot": 1, "chunks": 1, "first": 0}),
    orjson.dumps({"v": 1, "gen": "x", "slot": 0, "chunks": 1, "first": 0, "mac": "00"}),
    b"not json at all",
    b"[]",
]


def test_crafted_manifests_are_skipped_and_counted(broker, store_settings):
    settings, topic = store_settings
    store = _store(settings, topic)
    store.save(_checkpoint(0, 3_000, 1))
    store.close()
    key = f"{settings.kafka.group_id}/p0"
    forged_mac = record_mac(b"guessed-key-0123456", ["manifest/2"], b"{}").encode()
    _write(broker, topic, _state_partition(key),
           [(key.encode(), value, []) for value in _CRAFTED]
           + [(key.encode(), b'{"gen":"1"}', [(MAC_HEADER, forged_mac)])])
    rejected = _Rejections()
    reader = _store(settings, topic, rejected)
    try:
        got = reader.load(0)  # the real checkpoint, before the crafted records
        assert got is not None and got.detectors["det"] == ("fp", bytes([1]) * 3_000)
        assert sorted(rejected.seen) == sorted(
            [("manifest", "unsigned")] * len(_CRAFTED) + [("manifest", "bad_mac")])
        reader.save(_checkpoint(0, 500, 2))  # numbering is not disturbed either
        again = _store(settings, topic).load(0)
        assert again is not None and again.offsets == {"ml.inference": 500}
    finally:
        reader.close()


def test_a_replica_starts_and_processes_with_crafted_manifests_on_the_state_topic(broker):
    state_topic = unique("state")
    broker.create_topics([state_topic], partitions=2)
    settings = make_settings(broker, state={"store": "kafka", "signing_key": KEY,
                                            "topic": state_topic})
    group, topic = settings.kafka.group_id, settings.topics.inference
    # the state partitions a replica may restore (here it restores p0: one
    # principal-scoped detector, no model stage)
    for name in ("p0", "m0", "global"):
        key = f"{group}/{name}"
        _write(broker, state_topic, _state_partition(key),
               [(key.encode(), value, []) for value in _CRAFTED])
    events = [(b"alice", inference(T0 + i, "alice", i)) for i in range(200)]
    produce(broker, topic, events)
    metrics = Metrics()
    with DaemonThread(settings, metrics=metrics) as running:
        assert wait_for(lambda: committed(broker, group).get((topic, 0), 0) == len(events), 60)
        assert running.exit_code is None, "the replica kept running"
    unsigned = metrics.registry.get_sample_value(
        "mlwatchd_internal_records_rejected_total", {"record": "manifest", "reason": "unsigned"})
    assert unsigned is not None and unsigned >= len(_CRAFTED)
    # and what it saved on the way out is the checkpoint the next replica gets
    reader = _store(settings, state_topic)
    try:
        saved = reader.load(0)
        assert saved is not None and saved.offsets.get(topic) == len(events)
    finally:
        reader.close()


# -- item 10: checkpoints are bound to their partition and do not go backwards -------------

def test_a_checkpoint_copied_to_another_partition_is_refused(broker, store_settings):
    settings, topic = store_settings
    group = settings.kafka.group_id
    store = _store(settings, topic)
    try:
        store.save(_checkpoint(1, 3_000, 9))  # partition 1 is far ahead
        src = f"{group}/p1"
        records = _records(broker, TopicPartition(topic, _state_partition(src)))
    finally:
        store.close()
    # the attacker replays partition 1's chunks and manifest under partition 0's keys
    dst = f"{group}/p0"
    copied = [(r.key.decode().replace(src, dst, 1).encode(), r.value, list(r.headers))
              for r in records if r.key.decode().startswith(src)]
    assert len(copied) > 2 and copied[-1][0] == dst.encode()  # chunks, then the manifest
    _write(broker, topic, _state_partition(dst), copied)
    rejected = _Rejections()
    reader = _store(settings, topic, rejected)
    try:
        assert reader.load(0) is None, "partition 1's state and offsets must not load as 0"
        assert rejected.seen == [("manifest", "bad_mac")]
        assert reader.load(1) is not None  # still fine where it belongs
    finally:
        reader.close()


def test_an_old_manifest_replayed_does_not_roll_the_state_back(broker, store_settings):
    settings, topic = store_settings
    key = f"{settings.kafka.group_id}/p0"
    tp = TopicPartition(topic, _state_partition(key))
    store = _store(settings, topic)
    try:
        store.save(_checkpoint(0, 1_000, 1))
        old = [r for r in _records(broker, tp) if r.key == key.encode()]
        store.save(_checkpoint(0, 2_000, 2))
    finally:
        store.close()
    assert len(old) == 1
    replay = [(old[0].key, old[0].value, list(old[0].headers))]
    _write(broker, topic, tp.partition, replay)  # generation 1 again, after generation 2
    rejected = _Rejections()
    reader = _store(settings, topic, rejected)
    try:
        got = reader.load(0)
        assert got is not None and got.offsets == {"ml.inference": 2_000}, \
            "the highest generation wins, not the last record"
        # pushed out of the reader's window, the replay is all a scan finds: a process
        # that has seen generation 2 refuses it
        filler = [(f"{key}-noise/{i}".encode(), b"x", []) for i in range(80)]
        _write(broker, topic, tp.partition, filler + replay)
        with pytest.raises(ValueError, match="older than generation 2"):
            reader.load(0)
        assert ("manifest", "rollback") in rejected.seen
    finally:
        reader.close()


# -- item 9: peers' audit records suppress alerts only when signed ---------------------------


def test_forged_audit_records_do_not_suppress_alerts(broker, tmp_path):
    playbooks = write_flood_playbook(tmp_path)
    audit = unique("audit")
    broker.create_topics([audit], partitions=2)
    with FakeSlack() as slack:
        routes, metrics = [], []
        group = unique("group")  # replicas of one deployment: one consumer group
        for name in ("a", "b"):
            settings = replica_settings(
                broker, slack, group,
                {"dir": str(tmp_path / name), "store": "kafka", "signing_key": KEY},
                playbooks, audit)
            metrics.append(Metrics())
            routes.append(build_response(settings, metrics[-1]))
        a, b = routes
        # Whoever can write the audit topic claims finding 2 was already taken.
        claim = orjson.dumps({"schema": "mlwatchd.audit/v1", "event": "finding_received",
                              "route": "floods", "finding_id": flood_finding(2).finding_id})
        wrong = record_mac(b"not-the-state-key-at-all", ["audit/1", "g", audit], claim)
        _write(broker, audit, 0, [(None, claim, []), (None, claim, [(MAC_HEADER, wrong.encode())])])
        for route in routes:
            route.start()
        try:
            a.submit(flood_finding(1))
            assert len(slack.wait_for_delivered(1, timeout=20)) == 1
            assert b.peers.caught_up.wait(20), "b read the audit topic up to its end"
            assert wait_for(lambda: b.peers.marked >= 1, 20), "b read a's signed record"
            b.submit(flood_finding(1))  # re-emitted after a move: a's signed record suppresses it
            b.submit(flood_finding(2))  # the forged claim does not
            slack.wait_for_delivered(2, timeout=20)
            wait_for(lambda: len(slack.delivered) >= 3, 3)
        finally:
            for route in routes:
                route.stop(5)
    texts = [r.text_of_everything() for r in slack.delivered]
    assert sum("caller-1" in t for t in texts) == 1, texts
    assert sum("caller-2" in t for t in texts) == 1, texts
    sample = metrics[1].registry.get_sample_value
    assert sample("mlwatchd_internal_records_rejected_total",
                  {"record": "audit", "reason": "unsigned"}) == 1
    assert sample("mlwatchd_internal_records_rejected_total",
                  {"record": "audit", "reason": "bad_mac"}) == 1


def test_a_daemon_refuses_a_local_checkpoint_copied_from_another_partition(broker, tmp_path):
    # Partition 1 is far ahead of partition 0. Its checkpoint copied over
    # partition 0's would seek partition 0 past events never processed.
    settings = make_settings(broker, partitions=2,
                             state={"dir": str(tmp_path / "state"), "signing_key": KEY})
    group, topic = settings.kafka.group_id, settings.topics.inference

    def events(partition, start, n):
        return [(b"alice", inference(T0 + start + i, "alice", start + i), [])
                for i in range(n)]

    _write(broker, topic, 0, events(0, 0, 50))
    _write(broker, topic, 1, events(1, 1_000, 300))
    with DaemonThread(settings):
        assert wait_for(lambda: committed(broker, group).get((topic, 0)) == 50
                        and committed(broker, group).get((topic, 1)) == 300, 60)
    where = tmp_path / "state" / group
    (where / "p0.ckpt").write_bytes((where / "p1.ckpt").read_bytes())
    _write(broker, topic, 0, events(0, 50, 20))
    metrics = Metrics()
    with DaemonThread(settings, metrics=metrics) as running:
        assert wait_for(lambda: committed(broker, group).get((topic, 0)) == 70, 60)
        assert wait_for(lambda: running.daemon.processed >= 20, 10)
    assert running.daemon.processed == 20, "partition 0 resumed at its own commit"
    assert metrics.registry.get_sample_value(
        "mlwatchd_internal_records_rejected_total",
        {"record": "checkpoint", "reason": "bad_mac"}) == 1
