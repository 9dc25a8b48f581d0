"""The ``ocsf`` playbook action: OCSF Detection Findings to a SIEM collector (a local receiver).

Each body must validate against the OCSF 1.8.0 Detection Finding schema
(tests/fixtures/ocsf), be signed like the webhook's, carry pseudonyms and
statistics only, and say Create for a new incident, Update for an update of
one and Close when the playbook resolves it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pb_helpers import PSEUDO_KEY, build_finding

from detectors.incidents import IncidentPolicy, IncidentTable
from playbooks.privacy import Pseudonymizer

SECRET = "siem-hmac-0123456789"
TOKEN = "Splunk 6a2e9c1b-0000-4000-8000-00000000beef"
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "ocsf" /
                     "detection_finding-1.8.0.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PB_SIEM_SECRET", SECRET)
    monkeypatch.setenv("PB_SIEM_AUTH", TOKEN)


def siem_playbook(url: str, window: str = "0.5s") -> str:
    return f"""
    actions:
      siem:
        type: ocsf
        params:
          url: "{url}"
          secret_env: PB_SIEM_SECRET
          headers_env: {{Authorization: PB_SIEM_AUTH}}
          timeout: 2s
    routes:
      - name: to-siem
        match: {{}}
        actions: [siem]
        dedup: {{key: "{{kind}}:{{entity.id}}", window: {window}}}
        realert: 0.2s
    """


def _valid(body: dict[str, Any]) -> dict[str, Any]:
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in VALIDATOR.iter_errors(body)]
    assert errors == []
    return body


def test_a_new_finding_goes_to_the_siem_as_a_signed_pseudonymised_ocsf_create(
        engine_factory: Any, receiver: Any) -> None:
    receiver.statuses = [503]  # retried, like every action
    engine, events = engine_factory(siem_playbook(receiver.url + "/collector"),
                                    slack_route=None)
    finding = build_finding()
    engine.submit(finding)
    events.wait_for("action_delivered")
    first, req = receiver.requests
    assert first.body == req.body, "a retry sends the same event"
    assert [r["status"] for r in events.of("action_retry")] == [503]
    expected = hmac.new(SECRET.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-mlwatchd-signature"] == f"sha256={expected}"
    assert req.headers["authorization"] == TOKEN
    assert req.headers["idempotency-key"] == f"{finding.finding_id}:to-siem:siem"
    body = _valid(req.json())
    assert (body["class_uid"], body["activity_id"], body["type_uid"]) == (2004, 1, 200401)
    assert body["finding_info"]["uid"] == finding.finding_id
    assert body["finding_info"]["attacks"] == [
        {"technique": {"uid": "AML.T0024"}, "sub_technique": {"uid": "AML.T0024.002"}}]
    assert (body["severity_id"], body["status_id"]) == (4, 1)
    assert body["evidences"][0]["user"]["uid"] == Pseudonymizer(PSEUDO_KEY).pseudonym("mallory")
    raw = req.body.decode()
    for leak in ("mallory", "10.1.2.3", "secret-row-data", "5.1", SECRET, TOKEN):
        assert leak not in raw, leak


def test_a_repeat_of_the_incident_is_an_ocsf_update_and_the_resolve_a_close(
        engine_factory: Any, receiver: Any) -> None:
    engine, events = engine_factory(siem_playbook(receiver.url), slack_route=None)
    incidents = IncidentTable(IncidentPolicy(quiet_s=86_400, update_every_s=0))
    opened = incidents.admit(build_finding(event_ts=1_700_000_000.0))
    assert opened is not None and not opened.is_update
    engine.submit(opened)
    events.wait_for("incident_resolved", timeout=10)
    update = incidents.admit(build_finding(event_ts=1_700_003_600.0))
    assert update is not None and update.is_update
    engine.submit(update)
    events.wait_for("incident_resolved", 2, timeout=10)
    events.wait_for("action_delivered", 3)
    bodies = [_valid(r.json()) for r in receiver.requests]
    # The SIEM's finding is the incident's: every body names the first finding's id.
    assert [(b["finding_info"]["uid"], b["activity_id"]) for b in bodies] == [
        (opened.finding_id, 1), (opened.finding_id, 3), (opened.finding_id, 2)]
    closed = bodies[1]
    assert (closed["type_uid"], closed["status_id"], closed["status"]) == (200403, 4, "Resolved")
    assert "status_id" not in bodies[2] and bodies[2]["type_uid"] == 200402


def test_an_escalating_incident_update_is_an_ocsf_update_naming_its_incident(
        engine_factory: Any, receiver: Any) -> None:
    engine, events = engine_factory(siem_playbook(receiver.url, window="30m"), slack_route=None)
    incidents = IncidentTable(IncidentPolicy(quiet_s=86_400, update_every_s=86_400))
    opened = incidents.admit(build_finding(event_ts=1_700_000_000.0))
    assert opened is not None
    engine.submit(opened)
    events.wait_for("action_delivered")
    worse = incidents.admit(build_finding(severity="critical", event_ts=1_700_000_600.0))
    assert worse is not None and worse.is_update and worse.incident is not None
    engine.submit(worse)
    events.wait_for("action_delivered", 2)
    first, second = (_valid(r.json()) for r in receiver.requests)
    assert (first["activity_id"], first["status_id"]) == (1, 1)
    assert second["activity_id"] == 2 and second["severity_id"] == 5
    assert second["finding_info"]["uid"] == worse.finding_id
    assert second["unmapped"]["mlwatchd"]["incident"]["id"] == opened.finding_id
    assert second["count"] == 2
    assert second["finding_info"]["first_seen_time"] == 1_700_000_000_000
    assert second["finding_info"]["last_seen_time"] == 1_700_000_600_000


def test_a_refused_event_is_reported_failed_without_leaking_the_token(
        engine_factory: Any, receiver: Any) -> None:
    receiver.statuses = [400]
    engine, events = engine_factory(siem_playbook(receiver.url), slack_route=None)
    engine.submit(build_finding())
    [failed] = events.wait_for("action_failed")
    assert failed["status"] == 400 and len(receiver.requests) == 1
    assert TOKEN not in json.dumps(events.calls, default=str)


def test_an_unset_token_variable_fails_the_playbook_at_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pb_helpers import write_playbooks

    from playbooks.model import PlaybookError

    monkeypatch.delenv("PB_SIEM_AUTH")
    with pytest.raises(PlaybookError, match="headers_env: Authorization: environment variable "
                                            "PB_SIEM_AUTH is not set"):
        write_playbooks(tmp_path, siem_playbook("https://siem.example.com/in"))
