"""The parts of the consumer loop, each alone: intake, model stage, delivery, checkpoints,
rebalance; and the state-partition type that names whose state is whose."""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata

from daemon.checkpoints import Checkpoints, state_partition_of
from daemon.delivery import FindingHandoff, RecordDelivery
from daemon.intake import FORMAT_HEADER, Intake
from daemon.kafka_io import DLQ_HEADERS, OutRecord
from daemon.metrics import Health, Metrics
from daemon.model_stage import SOURCE_HEADER, ModelStage, SeenSources
from daemon.rebalance import Offsets, Ownership
from daemon.settings import Settings
from daemon.state import Checkpoint, LocalStateStore, partition_name
from detectors.findings import Entity, Finding, Source
from detectors.pipeline import GLOBAL, DetectorSpec, Pipeline, StatePartition
from playbooks.outbox import OutboxUnavailable
from tests.formats.fixture_io import ROOT, read_fixture

Message = namedtuple("Message", "offset key value headers timestamp")

NOW = time.time()
INFERENCE = "ml.inference"
KSERVE = "kserve.logs"
RTOPIC = "mlwatchd.repartition"
KEY = b"k" * 32


def _event(model: str = "m", request: str = "r", **fields: Any) -> bytes:
    return orjson.dumps({"ts": NOW, "model_id": model, "request_id": request, "principal": "p",
                         "features": [1.0], "prediction": 1, **fields})


def _intake(metrics: Metrics | None = None, rtopic: str | None = None) -> Intake:
    inputs = {**Settings().input_formats(),
              KSERVE: ("kserve", {"principal_headers": ["x-forwarded-user"]})}
    return Intake(inputs, dlq_topic="dlq", metrics=metrics or Metrics(), max_bytes=1 << 20,
                  max_future_skew_s=86_400.0, max_age_s=None, repartition_topic=rtopic)


def _kserve() -> list[Message]:
    _, messages = read_fixture(next((ROOT / "kserve").glob("*.jsonl")))
    return [Message(i, None, m.value, m.headers, m.timestamp_ms) for i, m in enumerate(messages)]


# -- StatePartition -------------------------------------------------------------

def test_state_partitions_keep_the_integer_codes_and_names_of_old_checkpoints() -> None:
    old = {3: "p3", 0: "p0", -1: "global", -2: "m0", -7: "m5"}
    for code, name in old.items():
        partition = StatePartition.from_code(code)
        assert partition.code == code and str(partition) == name == partition_name(code)
    assert StatePartition.from_code(-1) == GLOBAL
    assert StatePartition.model(0) != StatePartition.input(0)
    assert sorted([StatePartition.input(1), GLOBAL, StatePartition.model(1),
                   StatePartition.model(0)]) == [StatePartition.model(1), StatePartition.model(0),
                                                 GLOBAL, StatePartition.input(1)]


def test_a_state_partition_refuses_what_names_no_state() -> None:
    for kind, index in (("input", -1), ("model", -2), ("global", 3), ("other", 0)):
        with pytest.raises(ValueError, match="not a state partition"):
            StatePartition(kind, index)  # type: ignore[arg-type]


def test_the_pipeline_keeps_model_and_input_state_of_the_same_number_apart() -> None:
    pipeline = Pipeline([DetectorSpec("volume.principal_rate"), DetectorSpec("drift.features")],
                        repartitioned=True)
    pipeline.restore(StatePartition.model(0), {})
    pipeline.restore(0, {})  # a bare int is an input partition (Source.partition)
    kinds = {p: sorted(d.name for q, d in pipeline.detectors() if q == p)
             for p in pipeline.partitions()}
    assert kinds == {StatePartition.model(0): ["drift.features"],
                     StatePartition.input(0): ["volume.principal_rate"]}
    with pytest.raises(ValueError):
        pipeline.snapshot(-2)  # the old magic integer names nothing any more


def test_a_checkpoint_written_under_the_old_integer_code_restores_into_the_model_stage(
        tmp_path: Path) -> None:
    LocalStateStore(tmp_path, "g", KEY).save(Checkpoint(
        -2, {RTOPIC: 40}, {}, sources={"ml.inference:0": 9}, source_items={"ml.inference:0": 1}))
    pipeline = Pipeline([DetectorSpec("drift.features")], repartitioned=True)
    stage = ModelStage(RTOPIC, pipeline.model_scope_wants, Metrics())
    checkpoints = Checkpoints(pipeline, _intake(rtopic=RTOPIC), stage,
                              LocalStateStore(tmp_path, "g", KEY))
    assert (tmp_path / "g" / "m0.ckpt").exists()
    restored = checkpoints.load(StatePartition.model(0))
    assert restored is not None and restored.offsets == {RTOPIC: 40}
    assert stage.snapshot(StatePartition.model(0)) == SeenSources({"ml.inference:0": 9},
                                                                  {"ml.inference:0": 1})
    assert checkpoints.load(StatePartition.input(0)) is None


# -- intake ---------------------------------------------------------------------

def test_intake_dead_letters_bad_messages_and_keeps_the_good_in_order() -> None:
    metrics = Metrics()
    intake = _intake(metrics)
    dead: list[OutRecord] = []
    messages = [Message(0, b"k", _event(), [], None), Message(1, b"k", b"{", [], None),
                Message(2, b"k", _event(ts=NOW + 10 * 86_400), [], None),
                Message(3, b"k", _event(request="s"), [], None)]
    events = intake.decode(TopicPartition(INFERENCE, 4), messages, dead)
    assert [(s.topic, s.partition, s.offset) for _, s in events] == [(INFERENCE, 4, 0),
                                                                     (INFERENCE, 4, 3)]
    reasons = [dict(r[3] or ())[DLQ_HEADERS[3]] for r in dead]
    assert reasons == [b"not_json", b"ts_out_of_range"]
    assert all(r[0] == "dlq" and FORMAT_HEADER not in dict(r[3] or ()) for r in dead)
    assert metrics.dlq._value.get() == 2


def test_intake_format_state_is_per_input_partition_and_survives_snapshot_restore() -> None:
    request, response = _kserve()[:2]
    intake = _intake()
    assert intake.decode(TopicPartition(KSERVE, 0), [request], []) == []
    assert intake.decode(TopicPartition(KSERVE, 1), [request], []) == []
    assert intake.stats()[(KSERVE, "kserve", "pending")] == 2
    saved = intake.snapshot(0)
    assert saved[KSERVE]["format"] == "kserve"

    intake.drop(0)
    assert intake.stats()[(KSERVE, "kserve", "pending")] == 1, "partition 1 kept its join"
    assert intake.decode(TopicPartition(KSERVE, 0), [response], []) == []

    other = _intake()
    other.restore(0, saved)
    events = other.decode(TopicPartition(KSERVE, 0), [response], [])
    assert [s.item for _, s in events] == [0, 1], "the response joined the restored request"


# -- model stage ----------------------------------------------------------------

def test_the_model_stage_forwards_wanted_models_and_drops_a_forged_source_header() -> None:
    stage = ModelStage(RTOPIC, lambda model: model != "ignored", Metrics())
    messages = [Message(5, b"k", _event("a"), [("x", b"1"), (SOURCE_HEADER, b"in:0:999")], None),
                Message(6, b"k", _event("ignored"), [], None)]
    events = _intake().decode(TopicPartition(INFERENCE, 2), messages, [])
    forward = stage.forward(messages, events, contract=True)
    assert forward == [(RTOPIC, b"a", messages[0].value,
                        [("x", b"1"), (SOURCE_HEADER, f"{INFERENCE}:2:5".encode())])]


def test_the_model_stage_admits_each_copy_once_across_a_checkpoint() -> None:
    metrics = Metrics()
    stage = ModelStage(RTOPIC, lambda _: True, metrics)
    tp = TopicPartition(RTOPIC, 1)
    intake = _intake(rtopic=RTOPIC)

    def copies(first: int, *origins: str) -> list[Message]:
        return [Message(first + i, b"m", _event(), [(SOURCE_HEADER, o.encode())], None)
                for i, o in enumerate(origins)]

    def admitted(s: ModelStage, batch: list[Message]) -> list[tuple[str, int, int | None]]:
        return [(src.topic, src.offset, src.item)
                for _, src in s.admit(tp, batch, intake.decode(tp, batch, []))]

    assert admitted(stage, copies(0, "in:0:5#0", "in:0:5#1", "in:0:6")) == [
        ("in", 5, 0), ("in", 5, 1), ("in", 6, None)]
    saved = stage.snapshot(StatePartition.model(1))
    again = copies(3, "in:0:5#1", "in:0:6", "in:0:7")
    restored = ModelStage(RTOPIC, lambda _: True, metrics)
    restored.restore(StatePartition.model(1), saved)
    assert admitted(restored, again) == [("in", 7, None)]
    assert metrics.repartition_duplicates._value.get() == 2
    restored.drop(StatePartition.model(1))
    assert len(admitted(restored, again)) == 3, "a dropped partition has seen nothing"


# -- delivery -------------------------------------------------------------------

class _Future:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return None


class _Producer:
    """Acknowledges, or fails every send while ``failing``; refuses values over 100 bytes."""

    def __init__(self, log: list[tuple[int, str]], number: int, failing: bool) -> None:
        self.log, self.number, self.failing = log, number, failing
        self.closed = False

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
             headers: Any = None) -> _Future:
        if value is not None and len(value) > 100:
            raise MessageSizeTooLargeError("too large")
        self.log.append((self.number, topic))
        return _Future(KafkaTimeoutError("no ack") if self.failing else None)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def test_delivery_makes_a_fresh_producer_when_acks_keep_failing_and_reports_refusals() -> None:
    sent: list[tuple[int, str]] = []
    made: list[_Producer] = []

    def new_producer() -> _Producer:
        made.append(_Producer(sent, len(made), failing=not made))  # only the first one fails
        return made[-1]

    metrics, health = Metrics(), Health(60)
    delivery = RecordDelivery(new_producer, metrics=metrics, health=health,
                              stopping=threading.Event(), backoff_max_s=10)
    assert delivery.connect()
    records: list[OutRecord] = [("findings", b"k", b"v", None),
                                ("findings", b"k", b"x" * 200, None)]
    assert delivery.deliver(records)
    assert len(made) == 2 and made[0].closed, "the failing producer was replaced"
    assert sent[-1] == (1, "findings"), "the fresh producer sent it"
    assert metrics.produce_retries._value.get() == 3  # 0.5 + 1 + 2 s, then a new producer
    assert metrics.refused.labels("findings", "dropped")._value.get() == 1, "never retried"
    assert health.ready and health.reason == "consuming"


def test_delivery_gives_up_without_acks_when_asked_to_stop() -> None:
    stopping = threading.Event()
    health = Health(60)
    delivery = RecordDelivery(lambda: _Producer([], 0, failing=True),
                              metrics=Metrics(), health=health, stopping=stopping,
                              backoff_max_s=10)
    assert delivery.connect()
    stopping.set()
    assert not delivery.deliver([("findings", b"k", b"v", None)])
    assert not health.ready and health.reason == "cannot write findings to Kafka"


class _Outbox:
    """A response side whose outbox is locked for the first ``refusals`` submits."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.taken: list[str] = []

    def submit(self, finding: Finding) -> None:
        if self.refusals:
            self.refusals -= 1
            raise OutboxUnavailable("locked")
        self.taken.append(finding.finding_id)


def test_the_finding_handoff_holds_the_batch_until_the_outbox_takes_every_finding() -> None:
    findings = [Finding.build(detector="d", kind="suspicious_access", severity="high",
                              entity=Entity("principal", p), model_id=None, summary="s",
                              evidence={}, atlas=[], event_ts=NOW,
                              sources=[Source(INFERENCE, 0, i)])
                for i, p in enumerate(("a", "b"))]
    outbox, health = _Outbox(refusals=1), Health(60)
    handoff = FindingHandoff(outbox, health=health, stopping=threading.Event(),  # type: ignore[arg-type]
                             backoff_max_s=1)
    assert handoff.submit(findings)
    assert outbox.taken == [f.finding_id for f in findings]
    assert health.ready


# -- checkpoints and rebalance ----------------------------------------------------

class _Consumer:
    """Records what the rebalance state machine asks of the group consumer."""

    def __init__(self, committed: dict[TopicPartition, int] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._committed = committed or {}
        self.commits: list[dict[TopicPartition, OffsetAndMetadata]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", (tp, offset)))

    def pause(self, *tps: TopicPartition) -> None:
        self.calls.append(("pause", tps))

    def resume(self, *tps: TopicPartition) -> None:
        self.calls.append(("resume", tps))

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        return 1000

    def committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.commits.append(offsets)


def _ownership(store: LocalStateStore | None) -> tuple[Ownership, Pipeline, Metrics]:
    metrics = Metrics()
    pipeline = Pipeline([DetectorSpec("volume.principal_rate")], repartitioned=True)
    intake = _intake(metrics)
    offsets = Offsets(metrics)
    ownership = Ownership(Checkpoints(pipeline, intake, None, store), offsets, metrics,
                          inputs=intake.inputs)
    return ownership, pipeline, metrics


def test_a_revoked_partition_given_back_continues_and_one_given_away_is_dropped() -> None:
    ownership, pipeline, metrics = _ownership(store=None)
    consumer = _Consumer()
    ownership.consumer = ownership.offsets.consumer = consumer  # type: ignore[assignment]
    p0, p1 = TopicPartition(INFERENCE, 0), TopicPartition(INFERENCE, 1)
    ownership.on_assigned([p0, p1])
    assert ownership.restored == {StatePartition.input(0), StatePartition.input(1)}
    pipeline.restore(0, {})
    pipeline.restore(1, {})
    ownership.positions.update({p0: 10, p1: 20})

    ownership.on_revoked([p0, p1])
    assert ownership.restored == set() and set(ownership.parked) == {StatePartition.input(0),
                                                                     StatePartition.input(1)}
    ownership.on_assigned([p1])
    assert consumer.calls == [("seek", (p1, 20))], "continues where its state stopped"
    assert ownership.restored == {StatePartition.input(1)}
    assert pipeline.partitions() == [StatePartition.input(1)], "partition 0 went elsewhere"
    assert metrics.assigned._value.get() == 1


def test_a_gained_partition_waits_paused_until_its_checkpoint_is_restored(tmp_path: Path) -> None:
    tp = TopicPartition(INFERENCE, 2)
    LocalStateStore(tmp_path, "g", KEY).save(Checkpoint(2, {INFERENCE: 70}))
    ownership, _, _ = _ownership(LocalStateStore(tmp_path, "g", KEY))
    consumer = _Consumer(committed={tp: 50})
    ownership.consumer = ownership.offsets.consumer = consumer  # type: ignore[assignment]
    ownership.on_assigned([tp, TopicPartition(KSERVE, 2)])
    assert consumer.calls == [("pause", (tp, TopicPartition(KSERVE, 2)))]
    assert ownership.restored == set()

    ownership.catch_up()
    assert consumer.calls[1:] == [("seek", (tp, 70)),
                                  ("resume", (tp, TopicPartition(KSERVE, 2)))]
    assert ownership.positions == {tp: 70, TopicPartition(KSERVE, 2): 1000}
    assert consumer.commits == [{tp: OffsetAndMetadata(70, None, -1)}], \
        "saved past the last commit: committed now"
    assert ownership.restored == {StatePartition.input(2)}


def test_a_partition_without_checkpoint_is_saved_before_its_first_commit(tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path, "g", KEY)
    ownership, _, _ = _ownership(store)
    ownership.consumer = ownership.offsets.consumer = _Consumer()  # type: ignore[assignment]
    tp = TopicPartition(INFERENCE, 3)
    ownership.on_assigned([tp])
    ownership.catch_up()
    assert ownership.checkpoints.unsaved == {StatePartition.input(3)}
    ownership.positions[tp] = 1234
    ownership.save(ownership.checkpoints.unsaved)
    assert ownership.checkpoints.unsaved == set()
    saved = store.load(3)
    assert saved is not None and saved.offsets == {INFERENCE: 1234}


def test_state_partition_of_a_topic_partition() -> None:
    assert state_partition_of(TopicPartition(RTOPIC, 4), RTOPIC) == StatePartition.model(4)
    assert state_partition_of(TopicPartition(INFERENCE, 4), RTOPIC) == StatePartition.input(4)
    assert state_partition_of(TopicPartition(RTOPIC, 4), None) == StatePartition.input(4)
