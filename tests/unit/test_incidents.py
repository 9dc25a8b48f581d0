"""One incident per (detector, entity): repeats update it (detectors/incidents.py)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from daemon.lab.evaluate import EventInfo, Hit, score
from daemon.lab.simulate import Scenario
from daemon.settings import ConfigError, load
from detectors.events import InferenceEvent
from detectors.findings import Entity, Finding, Severity, Source, decode_finding, encode_finding
from detectors.incidents import IncidentPolicy, IncidentTable
from detectors.pipeline import DetectorSpec, Pipeline
from detectors.state import CapPool

T0 = 1_767_225_600.0


def _finding(i: int, ts: float, severity: Severity = "medium", who: str = "alice",
             detector: str = "extraction.prada") -> Finding:
    return Finding.build(detector=detector, kind="model_extraction", severity=severity,
                         entity=Entity("principal", who), model_id="m", summary="s",
                         evidence={"n": i}, atlas=[], event_ts=T0 + ts,
                         sources=[Source("ml.inference", 0, i)])


def _admit_all(table: IncidentTable, findings: list[Finding]) -> list[Finding | None]:
    return [table.admit(f) for f in findings]


# -- the layer ----------------------------------------------------------------


def test_repeats_within_the_quiet_period_are_one_incident() -> None:
    table = IncidentTable(IncidentPolicy(quiet_s=3600, update_every_s=1800))
    # A finding every 10 minutes for 2 hours: a detector with a 10-minute cooldown.
    out = _admit_all(table, [_finding(i, i * 600.0) for i in range(13)])
    emitted = [f for f in out if f is not None]
    # The first finding opens the incident and goes out unchanged (the contract's form).
    assert emitted[0] is out[0] and emitted[0].incident is None
    first_id = emitted[0].finding_id
    # Updates only every 30 minutes of event time: at 1800 s, 3600 s, 5400 s, 7200 s.
    assert [f.incident.seq for f in emitted if f.incident] == [2, 3, 4, 5]
    assert all(f.incident and f.incident.id == first_id for f in emitted[1:])
    assert [f.incident.count for f in emitted if f.incident] == [4, 7, 10, 13]
    assert all(f.is_update for f in emitted[1:]) and not emitted[0].is_update
    # finding_id stays the detector's own (stable for the same evidence).
    assert [f.finding_id for f in emitted] == [
        _finding(i, i * 600.0).finding_id for i in (0, 3, 6, 9, 12)]
    assert table.stats() == {"open": 1, "opened": 1, "updates": 4, "absorbed": 8, "evicted": 0}


def test_a_severity_increase_goes_out_at_once_as_an_escalation() -> None:
    table = IncidentTable(IncidentPolicy(quiet_s=3600, update_every_s=86_400))
    out = _admit_all(table, [_finding(0, 0), _finding(1, 60), _finding(2, 120, "critical"),
                             _finding(3, 180, "high"), _finding(4, 240, "critical")])
    assert [f is not None for f in out] == [True, False, True, False, False]
    escalation = out[2]
    assert escalation is not None and escalation.incident is not None
    assert escalation.incident.escalated and escalation.incident.seq == 2
    assert escalation.incident.max_severity == "critical" and escalation.severity == "critical"
    assert out[0] is not None and out[0].incident is None  # the incident's first finding
    assert escalation.incident.id == out[0].finding_id


def test_quiet_for_longer_than_quiet_s_opens_a_new_incident() -> None:
    table = IncidentTable(IncidentPolicy(quiet_s=3600, update_every_s=1800))
    out = _admit_all(table, [_finding(0, 0), _finding(1, 1000), _finding(2, 1000 + 3601)])
    assert out[1] is None  # a repeat 17 min later: absorbed
    first, new = out[0], out[2]
    assert first is not None and new is not None
    assert first.incident is None and new.incident is None  # two first findings
    assert new.finding_id != first.finding_id
    assert table.stats()["opened"] == 2


def test_entities_and_tables_are_separate() -> None:
    prada = IncidentTable(IncidentPolicy(quiet_s=3600))
    knn = IncidentTable(IncidentPolicy(quiet_s=3600))
    a = prada.admit(_finding(0, 0, who="alice"))
    b = prada.admit(_finding(1, 10, who="bob"))
    c = knn.admit(_finding(2, 20, who="alice", detector="probing.stateful_knn"))
    assert all(f is not None and f.incident is None for f in (a, b, c))  # three new ones
    assert prada.stats()["opened"] == 2 and knn.stats()["opened"] == 1


def test_quiet_s_zero_turns_incidents_off() -> None:
    table = IncidentTable(IncidentPolicy(quiet_s=0))
    findings = [_finding(i, i * 60.0) for i in range(5)]
    assert _admit_all(table, findings) == findings
    assert all(f.incident is None for f in findings)


def test_open_incidents_are_capped_least_recent_first_and_shared_per_pool() -> None:
    pool = CapPool(3)
    policy = IncidentPolicy(quiet_s=86_400, update_every_s=86_400, max_open=3)
    p0, p1 = IncidentTable(policy, pool), IncidentTable(policy, pool)
    for i, who in enumerate(("a", "b", "c")):
        p0.admit(_finding(i, float(i), who=who))
    assert p0.admit(_finding(9, 9.0, who="a")) is None  # "a" is now the most recent
    p1.admit(_finding(10, 10.0, who="x"))  # the pool is full: p0's least recent ("b") goes
    assert len(p0) + len(p1) == 3 and p0.table.evicted == 1
    again = p0.admit(_finding(11, 11.0, who="b"))
    assert again is not None and again.incident is None  # forgotten: a new incident
    assert p0.stats()["opened"] == 4
    assert p0.admit(_finding(12, 12.0, who="a")) is None  # still open
    p1.release()
    assert len(pool) == len(p0)


def test_snapshot_restore_continues_identically() -> None:
    policy = IncidentPolicy(quiet_s=3600, update_every_s=1800)
    stream = [_finding(i, i * 500.0, "high" if i == 7 else "medium", who=f"u{i % 3}")
              for i in range(20)]
    whole = IncidentTable(policy)
    expected = _admit_all(whole, stream)
    first = IncidentTable(policy)
    head = _admit_all(first, stream[:9])
    pool = CapPool(10)
    second = IncidentTable(policy, pool)
    second.restore(first.snapshot())
    assert len(pool) == len(second) == 3  # a restored table joins the shared cap
    assert head + _admit_all(second, stream[9:]) == expected
    with pytest.raises(ValueError, match="incident state"):
        second.restore(b"\x01garbage")


# -- the wire form ------------------------------------------------------------


def test_incident_is_an_optional_field_of_the_finding() -> None:
    plain = _finding(0, 0)
    assert b"incident" not in encode_finding(plain)  # without it: the v1 form exactly
    table = IncidentTable(IncidentPolicy(update_every_s=0))
    assert table.admit(plain) is plain  # a new incident: the contract's form exactly
    repeat = _finding(1, 60)
    stamped = table.admit(repeat)
    assert stamped is not None
    doc = msgspec.json.decode(encode_finding(stamped))
    assert doc["incident"] == {"id": plain.finding_id, "seq": 2, "first_ts": plain.ts,
                               "last_ts": repeat.ts, "count": 2, "max_severity": "medium",
                               "escalated": False}
    assert decode_finding(encode_finding(stamped)) == stamped
    assert decode_finding(encode_finding(plain)).incident is None


# -- the pipeline, with a real detector ---------------------------------------


def _flooding_stream(bursts: list[float]) -> list[tuple[InferenceEvent, Source]]:
    """40 callers (one request every 2 s in turn) over 12 hours; "flooder" sends
    5 requests a second for a minute at each offset in ``bursts``."""
    events: list[tuple[float, str]] = [(float(t), f"u{(t // 2) % 40}")
                                       for t in range(0, 12 * 3600, 2)]
    for start in bursts:
        events += [(start + i / 5, "flooder") for i in range(300)]
    events.sort()
    return [(InferenceEvent(ts=T0 + t, model_id="m", request_id=f"r{i}", principal=who,
                            features=[0.0], prediction=0),
             Source("ml.inference", 0, i)) for i, (t, who) in enumerate(events)]


def _run(pipeline: Pipeline, stream: list[tuple[InferenceEvent, Source]],
         partition: int = 0) -> list[Finding]:
    out: list[Finding] = []
    for start in range(0, len(stream), 500):
        out += pipeline.process_many("inference", partition, stream[start:start + 500])
    return out


def _peer_rate(policy: IncidentPolicy) -> Pipeline:
    # self_ratio 0: every flood is a raw finding (its own earlier floods would
    # otherwise excuse the same flood again after hours of quiet).
    return Pipeline([DetectorSpec("volume.peer_rate", {"cooldown_seconds": 300, "self_ratio": 0.0},
                                  incidents=policy)])


#: A flood every 15 minutes from 1 h to 5 h, then 3 h quiet, then again at 9 h.
BURSTS = [3600.0 + k * 900 for k in range(17)] + [9 * 3600.0, 9 * 3600.0 + 900]


def test_pipeline_turns_a_detectors_repeats_into_one_incident() -> None:
    stream = _flooding_stream(BURSTS)
    raw = _run(_peer_rate(IncidentPolicy(quiet_s=0)), stream)
    assert len(raw) == len(BURSTS) and all(f.entity.id == "flooder" for f in raw)
    out = _run(_peer_rate(IncidentPolicy(quiet_s=7200, update_every_s=3600)), stream)
    new = [f for f in out if f.incident is None]
    updates = [f for f in out if f.is_update]
    # Two incidents: the 4-hour episode, and the one after 3 h of quiet (> quiet_s).
    assert len(new) == 2 and new[0].finding_id == raw[0].finding_id
    assert new[1].finding_id == raw[17].finding_id
    # The first episode's 16 repeats: one update an hour of event time, all carrying it.
    assert 3 <= len(updates) <= 5
    assert all(u.incident and u.incident.id == new[0].finding_id for u in updates)
    assert {f.finding_id for f in out} <= {f.finding_id for f in raw}
    last = updates[-1].incident
    assert last is not None and last.count > len(updates) + 1  # absorbed repeats counted


def test_pipeline_snapshot_keeps_open_incidents_across_a_restart() -> None:
    stream = _flooding_stream(BURSTS)
    policy = IncidentPolicy(quiet_s=7200, update_every_s=3600)
    expected = _run(_peer_rate(policy), stream)
    cut = next(i for i, (e, _) in enumerate(stream) if float(e.ts) > T0 + 2 * 3600)
    before = _peer_rate(policy)
    head = _run(before, stream[:cut])
    after = _peer_rate(policy)
    after.restore(0, before.snapshot(0))
    tail = _run(after, stream[cut:])
    assert head + tail == expected
    assert tail and all(f.incident is not None for f in tail[:1])  # continues, not new
    # An older checkpoint (a bare detector state, no incidents) still restores.
    bare = _peer_rate(policy)
    bare.restore(0, {"volume.peer_rate": next(d for _, d in before.detectors()).snapshot()})
    assert next(d for _, d in bare.detectors()).stats() == \
        next(d for _, d in before.detectors()).stats()
    assert after.incident_stats()["volume.peer_rate"]["open"] == 1


# -- eval counts new incidents, not updates -----------------------------------


def test_eval_counts_a_new_incident_not_an_update() -> None:
    table = IncidentTable(IncidentPolicy(quiet_s=3600, update_every_s=0))
    times = [0.0, 600.0, 1200.0, 1200.0 + 3601]  # two repeats, then a new incident
    emitted = [table.admit(_finding(i, t, who="benign")) for i, t in enumerate(times)]
    hits = [Hit(i, f.detector, f.kind, f.entity.type, f.entity.id, f.is_update)
            for i, f in enumerate(emitted) if f is not None]
    assert [h.update for h in hits] == [False, True, True, False]
    events = [EventInfo(T0 + t) for t in times]
    card = score(events, hits, {})
    assert card.false_findings == 2 and card.updates == 2
    counts = card.detectors["extraction.prada"]
    assert (counts.total, counts.false, counts.updates) == (2, 2, 2)
    # Without the update flag every repeat would count as a new false finding.
    plain = [Hit(h.index, h.detector, h.kind, h.entity_type, h.entity_id) for h in hits]
    assert score(events, plain, {}).false_findings == 4


def test_eval_an_update_during_an_attack_still_detects_it() -> None:
    attack = Scenario("knockoff", "a knockoff thief", "principal", "mallory",
                      ("model_extraction",), 0.0)
    events = [EventInfo(T0), EventInfo(T0 + 60, "knockoff"), EventInfo(T0 + 120, "knockoff")]
    hits = [Hit(0, "extraction.prada", "model_extraction", "principal", "mallory"),
            Hit(2, "extraction.prada", "model_extraction", "principal", "mallory", True)]
    card = score(events, hits, {"knockoff": attack})
    assert card.detected == 1 and card.false_findings == 1 and card.updates == 1


# -- config -------------------------------------------------------------------


def test_incident_settings_reach_the_detector_specs(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("incidents: {quiet_s: 600, quiet_s_by_detector: {access.model_change: 60}}\n"
                   "detectors: {access.model_change: {}, volume.peer_rate: {}}\n")
    specs = {s.name: s.incidents for s in load(cfg).detector_specs()}
    assert specs["volume.peer_rate"].quiet_s == 600
    assert specs["access.model_change"].quiet_s == 60
    bad = tmp_path / "bad.yaml"
    bad.write_text("incidents: {quiet_s: -1, quiet_s_by_detector: {no.such: 5}}\n")
    with pytest.raises(ConfigError) as err:
        load(bad)
    joined = "\n".join(err.value.problems)
    assert "incidents.quiet_s" in joined
