"""Context-topic records are verified before they are parsed (no broker needed)."""

from __future__ import annotations

import orjson

from daemon.context import KafkaContextTable, context_mac_context
from daemon.integrity import MAC_HEADER, record_mac
from daemon.settings import KafkaSettings

KEY = b"context-unit-key-0123456789"
TOPIC = "mlwatchd.context"


def body(run_id: str = "r1", **changes: object) -> bytes:
    record = {"run_id": run_id, "orchestrator": "svc-airflow", "pipeline": "pipeline:p",
              "start_ts": 100.0, "end_ts": None, "prior_runs": 5,
              "orchestrator_first_ts": 0.0, "watch_start_ts": 0.0, **changes}
    return orjson.dumps(record)


def signed(key: str, value: bytes, with_key: bytes = KEY) -> list[tuple[str, bytes]]:
    return [(MAC_HEADER, record_mac(with_key, context_mac_context(TOPIC, key), value).encode())]


def table(key: bytes | None = KEY) -> tuple[KafkaContextTable, list[tuple[str, str]]]:
    refused: list[tuple[str, str]] = []
    t = KafkaContextTable(KafkaSettings(), TOPIC, key,
                          on_reject=lambda record, reason: refused.append((record, reason)))
    return t, refused


def test_a_signed_run_record_is_applied() -> None:
    t, refused = table()
    assert t.apply(b"run:r1", body(), signed("run:r1", body()))
    run = t.get_run("r1")
    assert run is not None and run.orchestrator == "svc-airflow" and refused == []


def test_unsigned_wrongly_signed_and_moved_records_are_refused_and_counted() -> None:
    t, refused = table()
    value = body()
    assert not t.apply(b"run:r1", value, [])
    assert not t.apply(b"run:r1", value, signed("run:r1", value, with_key=b"x" * 32))
    # a record signed for another key (run) does not verify under this one
    other = body("r2")
    assert not t.apply(b"run:r1", other, signed("run:r2", other))
    assert t.get_run("r1") is None
    assert refused == [("context", "unsigned"), ("context", "bad_mac"), ("context", "bad_mac")]
    assert t.rejected == 3


def test_malformed_and_mismatched_records_are_refused_after_the_mac() -> None:
    t, refused = table()
    for key, value in ((b"run:r1", b"{not json"), (b"run:r1", body(prior_runs=-1)),
                       (b"run:r1", body(start_ts="x")),
                       (b"run:zz", body("r1"))):
        assert not t.apply(key, value, signed(key.decode(), value))
    assert [r for _, r in refused] == ["malformed", "malformed", "malformed", "key_mismatch"]


def test_without_a_key_records_are_taken_as_they_come() -> None:
    t, refused = table(key=None)
    assert t.apply(b"run:r1", body(), [])
    assert t.get_run("r1") is not None and refused == []


def test_records_merge_whatever_their_order() -> None:
    t, _ = table()
    end = body(end_ts=900.0, start_ts=None)
    start = body()
    t.apply(b"run:r1", end, signed("run:r1", end))
    t.apply(b"run:r1", start, signed("run:r1", start))
    run = t.get_run("r1")
    assert run is not None and (run.start_ts, run.end_ts) == (100.0, 900.0)


def test_the_in_memory_table_is_bounded_and_ended_runs_expire() -> None:
    from detectors.context import InMemoryContextTable, PipelineRun

    small = InMemoryContextTable(max_runs=3, ended_ttl_seconds=1000.0)
    for i in range(5):
        small.put_run(PipelineRun(f"r{i}", "o", "p", 10.0 * i, None, 0, 0.0, 0.0))
    assert len(small) == 3 and small.get_run("r0") is None and small.get_run("r4") is not None
    small.put_run(PipelineRun("r4", "o", "p", None, 100.0, 0, 0.0, 0.0))
    small.put_run(PipelineRun("r5", "o", "p", 5000.0, None, 0, 0.0, 0.0))
    assert small.get_run("r4") is None  # ended 4,900 s before the table's high water
    assert small.get_run("r3") is not None  # still open
    too_long = "x" * 201
    small.put_run(PipelineRun(too_long, "o", "p", 1.0, None, 0, 0.0, 0.0))
    assert small.get_run(too_long) is None
