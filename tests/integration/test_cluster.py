"""Replicas: state handed over through Kafka, and model-scoped detectors routed by model."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from daemon.lab.fake_slack import FakeSlack
from daemon.metrics import Metrics
from daemon.response import build_response
from daemon.state import Checkpoint, KafkaStateStore
from detectors.findings import decode_finding
from detectors.pipeline import StatePartition
from tests.integration.kafka_helpers import (
    DaemonThread,
    committed,
    flood_finding,
    make_settings,
    produce,
    read_all,
    replica_settings,
    unique,
    wait_for,
    write_flood_playbook,
)

pytestmark = pytest.mark.integration

KEY = "0123456789abcdef-state-key"
T0 = 1_767_225_600.0


@pytest.fixture
def store_settings(broker):
    settings = make_settings(broker)
    topic = unique("state")
    broker.create_topics([topic], partitions=2)
    return settings, topic


def _store(settings, topic, key=KEY, chunk=1024):
    return KafkaStateStore(settings.kafka, topic, settings.kafka.group_id, key.encode(), chunk)


def _checkpoint(partition, size, tag):
    return Checkpoint(partition, {"ml.inference": size},
                      {"det": ("fp", bytes([tag]) * size)}, sources={"ml.inference:0": tag})


def test_chunked_checkpoints_round_trip_and_the_newest_wins(store_settings):
    settings, topic = store_settings
    store = _store(settings, topic)
    try:
        assert store.load(3) is None
        store.save(_checkpoint(3, 10_000, 1))  # ten chunks of 1 KiB
        store.save(_checkpoint(StatePartition.model(0).code, 500, 7))
        store.save(_checkpoint(3, 5_000, 2))
    finally:
        store.close()
    other = _store(settings, topic)  # another replica: nothing shared but Kafka
    try:
        got = other.load(3)
        assert got is not None and got.offsets == {"ml.inference": 5_000}
        assert got.detectors["det"] == ("fp", bytes([2]) * 5_000)
        model = other.load(StatePartition.model(0).code)
        assert model is not None and model.sources == {"ml.inference:0": 7}
    finally:
        other.close()


def test_an_unfinished_write_leaves_the_last_checkpoint_usable(store_settings):
    settings, topic = store_settings
    store = _store(settings, topic)
    try:
        store.save(_checkpoint(1, 4_000, 1))
        tp = store._topic_partition(store._manifest_key(1))
        # A replica killed mid-write: chunks of generation 2 (slot 0), no manifest.
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
        for i in range(4):
            producer.send(topic, key=f"{store._manifest_key(1)}/0/{i}".encode(),
                          value=b"\x00" * 1024, headers=[("mlwatchd.gen", b"2")],
                          partition=tp.partition).get(10)
        producer.close()
        got = _store(settings, topic).load(1)
        assert got is not None and got.detectors["det"][1] == bytes([1]) * 4_000
    finally:
        store.close()


def test_a_checkpoint_not_signed_with_our_key_is_refused(store_settings):
    settings, topic = store_settings
    writer = _store(settings, topic, key="another-key-of-16-chars")
    writer.save(_checkpoint(0, 100, 1))
    writer.close()
    reader = _store(settings, topic)
    try:
        assert reader.load(0) is None  # skipped (and counted): as if there were none
    finally:
        reader.close()


# -- model-scoped detectors across replicas ------------------------------------------

def _drift_stream(n_models=2, principals=12, per_model=6_000, shift_from=4_000):
    """Inference of a few models from many principals; each model's inputs shift late."""
    rng = np.random.default_rng(7)
    stream = []
    for i in range(per_model):
        for m in range(n_models):
            who = f"caller-{rng.integers(principals)}"
            x = rng.normal(0.0, 1.0, 4) + (1.5 if i >= shift_from else 0.0)
            stream.append((who.encode(), orjson.dumps({
                "ts": T0 + i, "model_id": f"model-{m}", "request_id": f"{m}-{i}",
                "principal": who, "features": [round(float(v), 4) for v in x],
                "prediction": int(x[0] > 0), "confidence": 0.9})))
    return stream


_DRIFT = {"drift.features": {"params": {"reference_size": 1000, "window": 500, "step": 250}}}


def _run_replicas(broker, settings, stream, replicas):
    produce(broker, settings.topics.inference, stream)
    group, topic = settings.kafka.group_id, settings.topics.inference
    threads = [DaemonThread(settings) for _ in range(replicas)]
    for thread in threads:
        thread.__enter__()
    try:
        assert wait_for(lambda: sum(v for (t, _), v in committed(broker, group).items()
                                    if t == topic) == len(stream), 120)
        # the model stage is done when the repartition topic is committed too
        if settings.state.repartitioned:
            rtopic = settings.topics.repartition
            assert wait_for(lambda: sum(v for (t, _), v in committed(broker, group).items()
                                        if t == rtopic) >= len(stream), 60)
    finally:
        for thread in threads:
            thread.stop()
    return threads


def _model_counts(threads):
    """model key -> events seen, for each model-scoped detector instance holding it."""
    seen: dict[str, list[int]] = {}
    for thread in threads:
        for _, det in thread.daemon.pipeline.detectors():
            if det.name == "drift.features":
                for key, st in det.table.items():
                    seen.setdefault(key, []).append(st.seen)
    return seen


@pytest.mark.parametrize("routing", ["repartition", "local"])
def test_each_model_is_watched_by_one_replica_with_its_whole_traffic(broker, routing):
    stream = _drift_stream()
    settings = make_settings(broker, partitions=4, detectors=_DRIFT,
                             state={"model_routing": routing})
    settings.topics.repartition = unique("ml.repartition")
    broker.create_topics([settings.topics.repartition], partitions=4)
    threads = _run_replicas(broker, settings, stream, replicas=2)
    seen = _model_counts(threads)
    assert sorted(seen) == ["model-0", "model-1"]
    if routing == "repartition":
        # each model's 6,000 events went to one detector instance, each once
        assert all(counts == [6_000] for counts in seen.values()), seen
        flagged = {decode_finding(m.value).model_id for m in
                   read_all(broker, settings.topics.findings, expect=2, timeout_s=10)}
        assert flagged == {"model-0", "model-1"}
    else:
        # the counter-example: two replicas each watch part of every model
        assert any(len(counts) > 1 or counts[0] < 6_000 for counts in seen.values()), seen


# -- chat dedup across replicas --------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["audit-shared", "no-sharing"])
def test_a_finding_re_emitted_on_another_replica_is_not_posted_again(broker, tmp_path, shared):
    playbooks = write_flood_playbook(tmp_path)
    audit = unique("audit")
    broker.create_topics([audit], partitions=2)
    with FakeSlack() as slack:
        routes = []
        group = unique("group")  # replicas of one deployment share the consumer group
        for name in ("a", "b"):  # two replicas on two hosts: separate state dirs
            state = {"dir": str(tmp_path / name)}
            if shared:
                state.update(store="kafka", signing_key=KEY)
            settings = replica_settings(broker, slack, group, state, playbooks, audit)
            routes.append(build_response(settings, Metrics()))
        a, b = routes
        for route in routes:
            route.start()
        try:
            a.submit(flood_finding(1))
            assert len(slack.wait_for_delivered(1, timeout=20)) == 1
            if shared:
                assert wait_for(lambda: b.peers.marked >= 1, 20), "b read a's audit"
            # the partition moved to b, which replays and re-emits the same finding
            b.submit(flood_finding(1))
            b.submit(flood_finding(2))  # a new one is posted as usual
            slack.wait_for_delivered(2, timeout=20)
            wait_for(lambda: len(slack.delivered) >= 3, 3)
        finally:
            for route in routes:
                route.stop(5)
    texts = [r.text_of_everything() for r in slack.delivered]
    assert sum("caller-1" in t for t in texts) == (1 if shared else 2), texts
    assert sum("caller-2" in t for t in texts) == 1


def test_a_checkpoint_ahead_of_the_commit_is_committed_on_restore(broker, tmp_path):
    # The last owner checkpointed, then its commit failed (a rebalance): the new
    # owner restores and seeks ahead of the commit. With nothing more to read it
    # must still commit there, or the lag never drains.
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    settings = make_settings(broker, state={"dir": str(tmp_path / "state")})
    group, topic = settings.kafka.group_id, settings.topics.inference
    stream = [(b"alice", orjson.dumps({
        "ts": T0 + i, "model_id": "m", "request_id": str(i), "principal": "alice",
        "features": [1.0], "prediction": 0})) for i in range(300)]
    produce(broker, topic, stream)
    with DaemonThread(settings):
        assert wait_for(lambda: committed(broker, group).get((topic, 0), 0) == 300)
    rewind = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group,
                           enable_auto_commit=False)
    rewind.commit({TopicPartition(topic, 0): OffsetAndMetadata(120, None, -1)})
    rewind.close()
    assert committed(broker, group)[(topic, 0)] == 120
    with DaemonThread(settings):
        assert wait_for(lambda: committed(broker, group).get((topic, 0), 0) == 300, 30)
