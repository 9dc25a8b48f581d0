"""Detector incident updates flow through the playbooks' dedup as repeats, not new alerts."""

from __future__ import annotations

import json

from pb_helpers import build_finding

from detectors.incidents import IncidentPolicy, IncidentTable

ROUTE = """
actions:
  chat: {type: slack}
routes:
  - name: extraction
    match: {kinds: [model_extraction], min_severity: high}
    actions: [chat]
    dedup: {key: "{kind}:{entity.id}", window: 0.5s}
    realert: 0.2s
"""


def test_an_update_after_the_dedup_window_is_a_repeat_in_the_thread(engine_factory,
                                                                    fake_slack):
    engine, events = engine_factory(ROUTE)
    incidents = IncidentTable(IncidentPolicy(quiet_s=86_400, update_every_s=0))
    opened = incidents.admit(build_finding(event_ts=1_700_000_000.0))
    assert opened is not None and not opened.is_update
    engine.submit(opened)
    events.wait_for("incident_resolved", timeout=10)  # the playbook's window passed
    update = incidents.admit(build_finding(event_ts=1_700_003_600.0))
    assert update is not None and update.is_update
    engine.submit(update)
    events.wait_for("incident_resolved", 2, timeout=10)
    events.wait_for("action_delivered", 3)
    first, *rest = fake_slack.delivered
    assert "thread_ts" not in first.body
    ts = json.loads(first.response)["ts"]
    # "Resolved", then "1 more" in the first message's thread (the second resolve
    # of the reopened incident shares the first one's idempotency key: not re-posted).
    assert [p.body.get("thread_ts") for p in rest] == [ts, ts]
    assert "1 more" in rest[1].body["text"]
    assert len(events.of("incident_opened")) == 1


def test_a_finding_outside_an_incident_after_the_window_alerts_anew(engine_factory,
                                                                   fake_slack):
    engine, events = engine_factory(ROUTE)
    engine.submit(build_finding())
    events.wait_for("incident_resolved", timeout=10)
    engine.submit(build_finding())  # no incident field: a new playbook incident
    events.wait_for("incident_opened", 2, timeout=10)
    events.wait_for("action_delivered", 3)
    assert len([p for p in fake_slack.delivered if "thread_ts" not in p.body]) == 2


def test_an_escalating_update_alerts_again(engine_factory, fake_slack):
    engine, events = engine_factory(ROUTE.replace("window: 0.5s", "window: 30m"))
    incidents = IncidentTable(IncidentPolicy(quiet_s=86_400, update_every_s=86_400))
    engine.submit(incidents.admit(build_finding()))
    events.wait_for("action_delivered")
    worse = incidents.admit(build_finding(severity="critical"))
    assert worse is not None and worse.incident is not None and worse.incident.escalated
    engine.submit(worse)
    events.wait_for("action_delivered", 2)
    assert "CRITICAL" in fake_slack.delivered[1].body["text"]
