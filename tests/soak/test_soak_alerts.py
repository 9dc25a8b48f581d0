"""The soak's alert comparison: what the clean run alerted and the faulty one never did.

Pure functions over finding ids and finding messages (no broker, no daemons):
a finding both runs found but only the clean run alerted is swallowed and
fails the soak; one the faulty run did not find at all (model-scoped findings
differ with the local state store) is counted but judged by its incident.
"""

from __future__ import annotations

from typing import Any

import msgspec

from daemon.lab.soak import SoakOptions, _alerts, _invariants, _severity_diffs
from detectors.findings import Entity, Finding, Source, encode_finding

T0 = 1_767_225_600.0


def _finding(i: int, who: str) -> Finding:
    return Finding.build(detector="access.exfiltration", kind="exfiltration", severity="high",
                         entity=Entity("principal", who), model_id=None, summary="s",
                         evidence={"n": i}, atlas=[], event_ts=T0 + i,
                         sources=[Source("ml.access", 0, i)])


def _report(alerts: dict[str, Any]) -> dict[str, Any]:
    return {"input": {"poison": 0}, "dlq": {"distinct_sources": 0}, "alerts": alerts,
            "slack": {"duplicate_posts": 0},
            "faulty": {"unprocessed": 0, "kills_done": 0, "outbox_stranded": 0,
                       "replicas": {}}}


def test_a_finding_both_runs_found_but_only_the_clean_run_alerted_fails_the_soak():
    a, b = _finding(1, "alice"), _finding(2, "bob")
    raw = {f.finding_id: encode_finding(f) for f in (a, b)}
    alerts = _alerts({a.finding_id, b.finding_id}, {a.finding_id}, raw, raw, None)
    assert alerts["findings_alerted_in_clean_never_in_faulty"] == 1
    assert alerts["findings_swallowed"] == 1
    # bob's incident (route, dedup key) was alerted only in the clean run
    assert alerts["incidents_alerted_in_clean_never_in_faulty"] == 1
    assert alerts["incidents_swallowed"] == 1
    checks = _invariants(_report(alerts), SoakOptions(kills=0))
    assert not checks["ok"]
    assert not checks["checks"]["findings of both runs alerted in the clean run only == 0"]


def test_another_finding_of_the_same_incident_alerted_instead_is_not_swallowed():
    # Same principal: one incident; the faulty run did not find the clean run's first
    # finding (another window), and alerted its own first finding of that incident.
    first, other = _finding(1, "alice"), _finding(2, "alice")
    clean_raw = {first.finding_id: encode_finding(first)}
    faulty_raw = {other.finding_id: encode_finding(other)}
    alerts = _alerts({first.finding_id}, {other.finding_id}, clean_raw, faulty_raw, None)
    assert alerts["findings_alerted_in_clean_never_in_faulty"] == 1
    assert alerts["findings_swallowed"] == 0
    assert alerts["clean_incidents_alerted"] == alerts["faulty_incidents_alerted"] == 1
    assert alerts["incidents_alerted_in_clean_never_in_faulty"] == 0
    assert alerts["incidents_swallowed"] == 0
    report = _invariants(_report(alerts), SoakOptions(kills=0))
    assert report["ok"], report
    assert report["informational"][
        "findings alerted in the clean run, never in the faulty one == 0"] is False


def test_a_common_finding_id_with_another_severity_is_reported():
    # extraction.prada in the 200k soak: same id, "high" in the clean run (Slack
    # route), "medium" after the faults (log-only route).
    a = _finding(1, "alice")
    b = _finding(2, "bob")
    lower = msgspec.structs.replace(b, severity="medium")
    clean = {f.finding_id: encode_finding(f) for f in (a, b)}
    faulty = {a.finding_id: encode_finding(a), b.finding_id: encode_finding(lower)}
    diffs = _severity_diffs(clean, faulty)
    assert diffs["count"] == 1
    assert diffs["examples"] == [{"finding_id": b.finding_id, "detector": "access.exfiltration",
                                  "clean": "high", "faulty": "medium"}]
    assert _severity_diffs(clean, clean)["count"] == 0


def test_an_incident_the_faulty_run_never_found_is_reported_but_not_swallowed():
    # state.store local: a model-scoped finding of the clean run is not found after
    # the faults at all ("compare" shows it); its incident is counted, not failed.
    a = _finding(1, "alice")
    alerts = _alerts({a.finding_id}, set(), {a.finding_id: encode_finding(a)}, {}, None)
    assert alerts["incidents_alerted_in_clean_never_in_faulty"] == 1
    assert alerts["incidents_swallowed"] == alerts["findings_swallowed"] == 0
    report = _invariants(_report(alerts), SoakOptions(kills=0))
    assert report["ok"], report
    assert report["informational"][
        "incidents alerted in the clean run, never in the faulty one == 0"] is False
