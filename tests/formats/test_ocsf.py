"""Findings as OCSF 1.8.0 Detection Findings, validated against the class's schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from daemon.formats import Decoded, make_format
from detectors.access.privilege_grants import PrivilegeGrantDetector
from detectors.findings import Entity, Finding, Source
from playbooks.ocsf import to_ocsf
from playbooks.privacy import Pseudonymizer

from .fixture_io import ROOT, read_fixture

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "ocsf" / \
    "detection_finding-1.8.0.schema.json"
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def _finding(entity: Entity, **kw: Any) -> Finding:
    args: dict[str, Any] = {
        "detector": "extraction.prada", "kind": "model_extraction", "severity": "high",
        "entity": entity, "model_id": "fraud-scorer",
        "summary": f"{entity.id} from 203.0.113.9 queried fraud-scorer like an extraction attack.",
        "evidence": {"ratio": 0.93, "threshold": 0.8, "features": [41.5, 7.25],
                     "payload": "raw body", "principal": entity.id,
                     "top_features": {"amount": 0.4, "age": 0.1}},
        "atlas": ["AML.T0024.002", "AML.T0040"], "event_ts": 1772445600.5,
        "sources": [Source("ml.inference", 3, 1234)],
    }
    args.update(kw)
    return Finding.build(**args)


def _errors(event: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in VALIDATOR.iter_errors(event)]


@pytest.mark.parametrize("entity", [Entity("principal", "mallory"), Entity("ip", "203.0.113.9"),
                                    Entity("model", "fraud-scorer"),
                                    Entity("resource", "dataset:train")])
@pytest.mark.parametrize("activity", ["create", "update"])
@pytest.mark.parametrize("pseudonymise", [False, True])
def test_ocsf_findings_validate_against_the_detection_finding_schema(
    entity: Entity, activity: str, pseudonymise: bool
) -> None:
    p = Pseudonymizer(b"k" * 32) if pseudonymise else None
    event = to_ocsf(_finding(entity), activity=activity, pseudonymizer=p,  # type: ignore[arg-type]
                    product_version="0.1.0")
    assert _errors(event) == []
    assert event["class_uid"] == 2004 and event["category_uid"] == 2
    assert event["type_uid"] == (200401 if activity == "create" else 200402)


def test_ocsf_carries_finding_id_atlas_severity_time_and_product() -> None:
    finding = _finding(Entity("principal", "mallory"), severity="critical")
    event = to_ocsf(finding, product_version="0.1.0")
    assert event["finding_info"]["uid"] == finding.finding_id
    assert event["finding_info"]["attacks"] == [
        {"technique": {"uid": "AML.T0024"}, "sub_technique": {"uid": "AML.T0024.002"}},
        {"technique": {"uid": "AML.T0040"}},
    ]
    assert (event["severity_id"], event["severity"]) == (5, "Critical")
    assert event["time"] == 1772445600500
    assert event["metadata"]["product"]["name"] == "mlwatchd"
    assert event["metadata"]["product"]["version"] == "0.1.0"
    assert event["metadata"]["version"] == "1.8.0"
    assert event["resources"] == [{"uid": "fraud-scorer", "name": "fraud-scorer", "type": "model"}]


def test_ocsf_leaves_no_raw_values_and_no_real_identities_when_pseudonymised() -> None:
    p = Pseudonymizer(b"k" * 32)
    event = to_ocsf(_finding(Entity("principal", "mallory")), pseudonymizer=p)
    text = json.dumps(event)
    for secret in ("mallory", "203.0.113.9", "41.5", "7.25", "raw body"):
        assert secret not in text, secret
    assert event["evidences"][0]["user"]["uid"] == p.pseudonym("mallory")
    assert event["evidences"][0]["data"] == {
        "ratio": 0.93, "threshold": 0.8, "top_features": {"amount": 0.4, "age": 0.1}}


def test_the_schema_refuses_what_ocsf_refuses() -> None:
    event = to_ocsf(_finding(Entity("principal", "m")))
    broken = json.loads(json.dumps(event))
    del broken["finding_info"]["uid"]
    broken["severity_id"] = 9
    broken["finding_info"]["attacks"] = [{"techniqe": {"uid": "AML.T0024"}}]
    broken["type_uid"] = 200407
    errors = _errors(broken)
    assert any("'uid' is a required property" in e for e in errors)
    assert any(e.startswith("severity_id") for e in errors)
    assert any("techniqe" in e for e in errors)
    assert any(e.startswith("type_uid") for e in errors)


def test_a_real_self_grant_finding_from_cloudtrail_validates_as_ocsf() -> None:
    options, messages = read_fixture(ROOT / "cloudtrail" / "log_file_records.jsonl")
    detector = PrivilegeGrantDetector(warmup_seconds=1e9)
    fmt = make_format("cloudtrail", options)
    findings = []
    for r in fmt.decode(messages[0].value, [], None):
        if isinstance(r, Decoded) and type(r.event).__name__ == "AuditEvent":
            findings += detector.process(r.event, Source("aws.cloudtrail", 0, r.item or 0)) or []
    assert findings
    for finding in findings:
        event = to_ocsf(finding, pseudonymizer=Pseudonymizer(b"x" * 32))
        assert _errors(event) == []
        assert "arn:aws" not in event["message"]


def test_ocsf_records_are_off_without_a_topic_and_follow_the_incident_with_one() -> None:
    from detectors.incidents import IncidentPolicy, IncidentTable
    from playbooks.ocsf import ocsf_records

    table = IncidentTable(IncidentPolicy(quiet_s=3600, update_every_s=0))
    first = table.admit(_finding(Entity("principal", "mallory")))
    again = table.admit(_finding(Entity("principal", "mallory"), event_ts=1772445900.5,
                                 sources=[Source("ml.inference", 3, 1300)]))
    assert first is not None and again is not None and again.is_update
    assert ocsf_records([first, again], "") == []
    records = ocsf_records([first, again], "siem.ocsf", product_version="9.9.9")
    assert [(r[0], r[1]) for r in records] == [("siem.ocsf", b"mallory")] * 2
    events = [json.loads(r[2] or b"") for r in records]
    assert [_errors(e) for e in events] == [[], []]
    assert [e["activity_id"] for e in events] == [1, 2]
    assert [e["finding_info"]["uid"] for e in events] == [first.finding_id, again.finding_id]
    assert events[1]["unmapped"]["mlwatchd"]["incident"]["id"] == first.finding_id
    assert events[0]["metadata"]["product"]["version"] == "9.9.9"
    assert ("content-type", b"application/json") in (records[0][3] or [])


def test_the_ocsf_topic_is_off_by_default_and_refused_as_an_input(tmp_path: Path) -> None:
    from daemon.settings import ConfigError, Settings, load

    assert Settings().topics.ocsf == ""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("detectors: {}\ntopics: {ocsf: siem.ocsf}\n"
                   "input:\n  formats:\n    siem.ocsf: {format: contract}\n")
    with pytest.raises(ConfigError) as caught:
        load(cfg)
    assert caught.value.problems == [
        "input.formats.siem.ocsf: is the ocsf topic, which mlwatchd writes"]
