"""The input-format seam, wired: config, decode path, item sources, format state, replay."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kafka import TopicPartition

from daemon.formats import Decoded, make_format
from daemon.kafka_io import DLQ_HEADERS
from daemon.runtime import FORMAT_HEADER, ITEM_HEADER, SOURCE_HEADER, Daemon
from daemon.settings import ConfigError, Settings, load
from detectors.events import InferenceEvent, decode_event
from detectors.findings import Entity, Finding, Source, encode_finding
from detectors.pipeline import StatePartition
from tests.formats.fixture_io import ROOT, read_fixture

Message = namedtuple("Message", "offset key value headers timestamp")

KSERVE = "kserve.logs"
TRAIL = "aws.cloudtrail"


FORMATS = {
    KSERVE: {"format": "kserve", "options": {"principal_headers": ["x-forwarded-user"]}},
    TRAIL: {"format": "cloudtrail", "options": {"training_buckets": ["ml-training-data"]}},
}


def _settings(input: dict[str, Any] | None = None, **extra: Any) -> Settings:
    """Fixture times are of 2026-03: no bound on age unless ``input`` sets one."""
    section = {"max_age_s": None, "formats": FORMATS, **(input or {})}
    return Settings(**{"detectors": {}, "input": section, **extra})


def _fixture(name: str) -> list[Message]:
    _, messages = read_fixture(next((ROOT / name).glob("*.jsonl")))
    return [Message(i, None, m.value, m.headers, m.timestamp_ms) for i, m in enumerate(messages)]


def _headers(record: Any) -> dict[str, bytes]:
    return dict(record[3] or ())


# -- finding ids and source items -------------------------------------------

def test_finding_ids_of_single_event_messages_are_those_computed_before_the_seam() -> None:
    """Ids and bytes computed with detectors/findings.py of commit 820a539 (before items)."""
    finding = Finding.build(
        detector="access.privilege_grant", kind="suspicious_access", severity="high",
        entity=Entity("principal", "dana"), model_id=None, summary="s",
        evidence={"self_grant": True}, atlas=["AML.T0012"], event_ts=1767225600.0,
        sources=[Source("ml.audit", 3, 1234), Source("ml.audit", 3, 1200, None)])
    assert finding.finding_id == "5047afbe06d865fef4531092ff040166"
    assert encode_finding(finding).decode() == (
        '{"finding_id":"5047afbe06d865fef4531092ff040166","ts":"2026-01-01T00:00:00.000Z",'
        '"detector":"access.privilege_grant","kind":"suspicious_access","severity":"high",'
        '"entity":{"type":"principal","id":"dana"},"model_id":null,"summary":"s",'
        '"evidence":{"self_grant":true},"atlas":["AML.T0012"],"sources":[{"topic":"ml.audit",'
        '"partition":3,"offset":1234},{"topic":"ml.audit","partition":3,"offset":1200}]}')
    replayed = Finding.build(
        detector="extraction.prada", kind="model_extraction", severity="medium",
        entity=Entity("principal", "mallory"), model_id="fraud", summary="s", evidence={},
        atlas=[], event_ts=0.0, sources=[Source("replay.jsonl", 0, 7)])
    assert replayed.finding_id == "6ebcaa6892fe72e58ded35e8c7715052"


def test_an_item_index_names_the_event_inside_its_message_and_in_the_finding_id() -> None:
    def build(source: Source) -> Finding:
        return Finding.build(detector="d", kind="drift", severity="low",
                             entity=Entity("model", "m"), model_id="m", summary="s",
                             evidence={}, atlas=[], event_ts=0.0, sources=[source])

    ids = {build(Source("t", 0, 5, item)).finding_id for item in (None, 0, 1)}
    assert len(ids) == 3, "each event of a batch is its own evidence"
    raw = json.loads(encode_finding(build(Source("t", 0, 5, 1))))
    assert raw["sources"] == [{"topic": "t", "partition": 0, "offset": 5, "item": 1}]


# -- config -----------------------------------------------------------------

def test_contract_topics_keep_their_kinds_and_configured_topics_get_their_format(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLWATCHD_TOPICS__AUDIT", "corp.audit")
    monkeypatch.setenv("MLWATCHD_INPUT__FORMATS",
                       json.dumps({"k8s.audit": {"format": "k8s-audit"}}))
    settings = load(None)
    formats = settings.input_formats()
    assert formats == {
        "ml.inference": ("contract", {"event_type": "inference"}),
        "corp.audit": ("contract", {"event_type": "audit"}),
        "ml.access": ("contract", {"event_type": "access"}),
        "k8s.audit": ("k8s-audit", {}),
    }
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "check-config"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "inputs: ml.inference, corp.audit, ml.access, k8s.audit (k8s-audit);" in run.stdout


def test_bad_input_formats_fail_at_start_with_one_line_per_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "detectors: {}\n"
        "input:\n  formats:\n"
        "    a.topic: {format: kservee}\n"
        "    b.topic: {format: kserve, options: {max_wait_s: -1, colour: red}}\n"
        "    mlwatchd.findings: {format: contract}\n")
    with pytest.raises(ConfigError) as caught:
        load(cfg)
    problems = caught.value.problems
    assert len(problems) == 4, problems
    assert problems[0].startswith("input.formats.a.topic.format: unknown format 'kservee'")
    assert "input.formats.b.topic: format kserve: max_wait_s: Input should be greater than 0" \
        in problems
    assert any(p.startswith("input.formats.b.topic: format kserve: colour:") for p in problems)
    assert "input.formats.mlwatchd.findings: is the findings topic, which mlwatchd writes" \
        in problems
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "check-config", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.count("config error: input.formats.") == 4


# -- the decode path ----------------------------------------------------------

def test_a_kserve_topic_gives_joined_events_with_item_sources_and_format_dead_letters() -> None:
    daemon = Daemon(_settings())
    dead: list[Any] = []
    events = daemon.intake.decode(TopicPartition(KSERVE, 2), _fixture("kserve"), dead)
    assert [(s.topic, s.partition, s.offset, s.item) for _, s in events] == [
        (KSERVE, 2, 1, 0), (KSERVE, 2, 1, 1), (KSERVE, 2, 3, None)]
    first = events[0][0]
    assert all(isinstance(e, InferenceEvent) for e, _ in events)
    assert isinstance(first, InferenceEvent) and first.principal == "alice@example.com"
    reasons = [(_headers(r)[DLQ_HEADERS[2]], _headers(r)[DLQ_HEADERS[3]]) for r in dead]
    assert reasons == [(b"5", b"not_json"), (b"7", b"invalid_value"), (b"8", b"missing_field")]
    for record in dead:
        assert record[0] == "mlwatchd.dlq"
        assert _headers(record)[FORMAT_HEADER] == b"kserve"
        assert _headers(record)[DLQ_HEADERS[0]] == KSERVE.encode()
    assert daemon.metrics.dlq._value.get() == 3


def test_a_cloudtrail_batch_with_one_bad_record_keeps_the_good_ones() -> None:
    daemon = Daemon(_settings())
    dead: list[Any] = []
    batch = _fixture("cloudtrail")[:1]
    events = daemon.intake.decode(TopicPartition(TRAIL, 0), batch, dead)
    items = [s.item for _, s in events]
    assert items == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert len(dead) == 1
    headers = _headers(dead[0])
    assert headers[ITEM_HEADER] == b"12" and headers[DLQ_HEADERS[3]] == b"missing_field"
    assert dead[0][2] == batch[0].value, "the dead letter is the message unchanged"


def test_contract_dead_letters_keep_exactly_the_contract_headers() -> None:
    daemon = Daemon(_settings())
    dead: list[Any] = []
    daemon.intake.decode(TopicPartition("ml.audit", 0),
                    [Message(0, b"k", b"not json", [("x", b"y")], None)], dead)
    assert [h for h, _ in dead[0][3]] == ["x", *DLQ_HEADERS]


def test_a_runaway_event_time_dead_letters_one_item_not_the_message() -> None:
    daemon = Daemon(_settings(input={"max_age_s": 10 * 365.25 * 86_400}))
    record = {"eventTime": "2001-01-01T00:00:00Z", "eventSource": "iam.amazonaws.com",
              "eventName": "AttachUserPolicy", "userIdentity": {"type": "IAMUser",
              "arn": "arn:aws:iam::1:user/a", "userName": "a"},
              "requestParameters": {"userName": "a", "policyArn": "arn:aws:iam::1:policy/x"}}
    recent = {**record, "eventTime": "2026-01-01T00:00:00Z"}
    value = json.dumps({"Records": [recent, record]}).encode()
    dead: list[Any] = []
    events = daemon.intake.decode(TopicPartition(TRAIL, 0), [Message(4, None, value, [], None)],
                                  dead)
    assert [s.item for _, s in events] == [0]
    assert _headers(dead[0])[ITEM_HEADER] == b"1"
    assert _headers(dead[0])[DLQ_HEADERS[3]] == b"ts_out_of_range"


def test_repartitioned_copies_of_a_batch_carry_the_item_and_decode_as_contract_events() -> None:
    daemon = Daemon(_settings(detectors={"drift.features": {}},
                              state={"model_routing": "repartition"}))
    messages = _fixture("kserve")[:2]
    events = daemon.intake.decode(TopicPartition(KSERVE, 0), messages, [])
    assert daemon.model_stage is not None
    forward = daemon.model_stage.forward(messages, events, contract=False)
    assert len(forward) == 2
    origins = [_headers(r)[SOURCE_HEADER] for r in forward]
    assert origins == [f"{KSERVE}:0:1#0".encode(), f"{KSERVE}:0:1#1".encode()]
    for (event, _), record in zip(events, forward, strict=True):
        assert record[1] == b"fraud-prod/sklearn-iris"
        assert decode_event(record[2], "inference") == event


def test_the_model_stage_skips_copies_it_has_seen_item_by_item() -> None:
    daemon = Daemon(_settings(detectors={"drift.features": {}},
                              state={"model_routing": "repartition"}))
    rtopic = daemon.settings.topics.repartition
    event = msgspec.json.decode(msgspec.json.encode(_fixture_event()), type=InferenceEvent)
    value = msgspec.json.encode(event)

    def copy(offset: int, origin: str) -> Message:
        return Message(offset, b"m", value, [(SOURCE_HEADER, origin.encode())], None)

    first = [copy(0, "in:0:5#0"), copy(1, "in:0:5#1"), copy(2, "in:0:6")]
    again = [copy(3, "in:0:5#1"), copy(4, "in:0:6"), copy(5, "in:0:7#0"), copy(6, "in:0:7#1")]
    stage = daemon.model_stage
    assert stage is not None
    seen = []
    for batch in (first, again):
        decoded = daemon.intake.decode(TopicPartition(rtopic, 0), batch, [])
        seen += [(s.offset, s.item) for _, s in
                 stage.admit(TopicPartition(rtopic, 0), batch, decoded)]
    assert seen == [(5, 0), (5, 1), (6, None), (7, 0), (7, 1)]
    assert daemon.metrics.repartition_duplicates._value.get() == 2


def _fixture_event() -> InferenceEvent:
    fmt = make_format("kserve")
    results = [r for m in _fixture("kserve")[:2]
               for r in fmt.decode(m.value, m.headers, m.timestamp)]
    first = results[0]
    assert isinstance(first, Decoded) and isinstance(first.event, InferenceEvent)
    return first.event


# -- format state with the partition's checkpoint -------------------------------

def test_a_pending_kserve_request_survives_a_restart_through_the_signed_checkpoint(
        tmp_path: Path) -> None:
    def daemon() -> Daemon:
        return Daemon(_settings(state={"dir": str(tmp_path), "signing_key": "k" * 32}))

    request, response = _fixture("kserve")[:2]
    before = daemon()
    tp = TopicPartition(KSERVE, 0)
    assert before.intake.decode(tp, [request], []) == []
    before.update_gauges()
    gauge = before.metrics.format_gauge.labels(KSERVE, "kserve", "pending")
    assert gauge._value.get() == 1
    before.checkpoints.save([StatePartition.input(0)], {}, set())

    after = daemon()
    assert after.checkpoints.load(StatePartition.input(0)) is not None
    events = after.intake.decode(tp, [response], [])
    assert [s.item for _, s in events] == [0, 1], "the response joined the restored request"

    fresh = daemon()  # no restore: the response has no request to join
    assert fresh.intake.decode(tp, [response], []) == []


def test_a_saved_format_state_is_not_given_to_another_format(tmp_path: Path) -> None:
    settings = {"dir": str(tmp_path)}
    first = Daemon(_settings(state=settings))
    first.intake.decode(TopicPartition(KSERVE, 0), _fixture("kserve")[:1], [])
    first.checkpoints.save([StatePartition.input(0)], {}, set())
    changed = Daemon(_settings(input={"formats": {KSERVE: {"format": "oip"}}}, state=settings))
    changed.checkpoints.load(StatePartition.input(0))
    assert changed.intake.formats[TopicPartition(KSERVE, 0)].snapshot()["join"]["pending"] == []


# -- replay --format -----------------------------------------------------------

def _run_replay(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("detectors: {access.privilege_grant: {}}\n"
                   "input:\n  formats:\n    trail: {format: cloudtrail, options: "
                   "{training_buckets: [ml-training-data]}}\n")
    return subprocess.run([sys.executable, "-m", "daemon.cli", "replay", "--config", str(cfg),
                           *args], capture_output=True, text=True, timeout=60)


def test_replay_reads_a_cloudtrail_file_and_finds_the_self_grant(tmp_path: Path) -> None:
    log_file = tmp_path / "trail.jsonl"
    log_file.write_bytes(_fixture("cloudtrail")[0].value + b"\n")
    run = _run_replay(tmp_path, "--format", "cloudtrail", str(log_file))
    assert run.returncode == 0, run.stderr
    findings = [json.loads(line) for line in run.stdout.splitlines()]
    mallory = [f for f in findings if f["entity"]["id"].endswith("user/mallory")
               and f["evidence"].get("self_grant")]
    assert mallory and mallory[0]["severity"] == "critical"
    assert mallory[0]["sources"][0] == {"topic": str(log_file), "partition": 0, "offset": 1,
                                        "item": 3}
    assert "missing_field" in run.stderr, "the bad record is reported, the good ones kept"


def test_replay_reads_kserve_messages_with_headers_from_a_kcat_dump(tmp_path: Path) -> None:
    dump = tmp_path / "kserve.jsonl"
    lines = []
    for m in _fixture("kserve"):
        flat = [x for name, value in m.headers for x in (name, value.decode())]
        lines.append(json.dumps({"topic": "t", "partition": 0, "offset": m.offset,
                                 "ts": m.timestamp, "headers": flat,
                                 "payload": m.value.decode()}))
    dump.write_text("\n".join([*lines, "not json"]) + "\n")
    from daemon.replay import ReplayStats, read_events

    stats = ReplayStats()
    fmt = make_format("kserve", {"principal_headers": ["x-forwarded-user"]})
    got = [(s.offset, s.item) for _, s in read_events([dump], stats, fmt=fmt, kcat=True)]
    assert got == [(2, 0), (2, 1), (4, None)]
    assert stats.bad_lines == 4  # three dead letters and the line that is no kcat line
    run = _run_replay(tmp_path, "--format", "kserve", "--kcat", str(dump))
    assert run.returncode == 0, run.stderr
    assert "replay_done" in run.stderr and '"events": 3' in run.stderr.replace("=", '": ')


def test_replay_of_an_unknown_format_is_one_clear_line(tmp_path: Path) -> None:
    run = _run_replay(tmp_path, "--format", "parquet", str(tmp_path / "cfg.yaml"))
    assert run.returncode == 2
    assert run.stderr.strip().startswith("mlwatchd replay: unknown format 'parquet'")
