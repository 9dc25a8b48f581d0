"""Approve / Deny buttons, signed interactivity callbacks, acknowledgement and escalation."""

from __future__ import annotations

import time

import pytest
from pb_helpers import SIGNING_SECRET, Published, build_finding, wait_until

CONTAIN = """
actions:
  chat: {type: slack}
  oncall: {type: slack, params: {channel: "#oncall"}}
  throttle:
    type: kafka
    requires_approval: true
    params: {action: rate_limit, ttl: 1h, params: {requests_per_minute: 10}}
routes:
  - name: extraction
    match: {kinds: [model_extraction]}
    actions: [chat, throttle]
    mitigations: [AML.M0004]
    escalation: {after: %(after)s, route: page}
  - name: page
    actions: [oncall]
"""


def contain(after: str = "1h") -> str:
    return CONTAIN % {"after": after}


def _approval_message(fake_slack):
    return wait_until(lambda: next((r for r in fake_slack.delivered
                                    if "Approval needed" in r.body.get("text", "")), None))


def test_approve_click_runs_the_action_and_updates_the_message(
        engine_factory, fake_slack, interactivity):
    published = Published()
    engine, _ = engine_factory(contain(), publish=published)
    url = interactivity(engine)
    engine.submit(build_finding())
    message = _approval_message(fake_slack)
    assert published.on("mlwatchd.actions") == []  # nothing runs before approval
    headers, body = fake_slack.interaction(message, "mlwatchd_approve",
                                           signing_secret=SIGNING_SECRET, user_id="U0ALICE")
    assert fake_slack.click(url, headers, body) == (200, b"")
    [action] = published.wait_on("mlwatchd.actions", 1)
    assert action["action"] == "rate_limit" and action["target"]["id"] == "mallory"
    assert action["approved_by"] == "U0ALICE" and action["params"] == {"requests_per_minute": 10}
    update = wait_until(lambda: [r for r in fake_slack.delivered if r.endpoint == "chat.update"])
    assert "Approved" in update[0].body["text"]
    assert not any(b.get("block_id") == "mlwatchd_approval" for b in update[0].body["blocks"])
    # A second click (replay within the window) changes nothing.
    assert fake_slack.click(url, headers, body)[0] == 200
    time.sleep(0.3)
    assert len(published.on("mlwatchd.actions")) == 1
    audit = [a["event"] for a in published.on("mlwatchd.audit")]
    assert "approval_requested" in audit and "approval_approved" in audit


@pytest.mark.parametrize("tamper", ["signature", "stale", "secret"])
def test_unsigned_or_stale_callbacks_get_401_and_run_nothing(
        engine_factory, fake_slack, interactivity, tamper):
    published = Published()
    engine, _ = engine_factory(contain(), publish=published)
    url = interactivity(engine)
    engine.submit(build_finding())
    message = _approval_message(fake_slack)
    secret = "not-the-secret" if tamper == "secret" else SIGNING_SECRET
    stamp = int(time.time()) - 301 if tamper == "stale" else None
    headers, body = fake_slack.interaction(message, "mlwatchd_approve", signing_secret=secret,
                                           timestamp=stamp)
    if tamper == "signature":
        body = body.replace(b"mlwatchd_approve", b"mlwatchd_approve ")  # altered in transit
    status, _ = fake_slack.click(url, headers, body)
    assert status == 401
    time.sleep(0.3)
    assert published.on("mlwatchd.actions") == []
    assert engine.outbox.jobs("action = 'throttle'") == []


def test_deny_cancels_the_action(engine_factory, fake_slack, interactivity):
    published = Published()
    engine, events = engine_factory(contain(), publish=published)
    url = interactivity(engine)
    engine.submit(build_finding())
    message = _approval_message(fake_slack)
    headers, body = fake_slack.interaction(message, "mlwatchd_deny",
                                           signing_secret=SIGNING_SECRET)
    assert fake_slack.click(url, headers, body)[0] == 200
    events.wait_for("approval_denied")
    update = wait_until(lambda: [r for r in fake_slack.delivered if r.endpoint == "chat.update"])
    assert "Denied" in update[0].body["text"]
    # Approving after a denial does nothing.
    headers, body = fake_slack.interaction(message, "mlwatchd_approve",
                                           signing_secret=SIGNING_SECRET)
    fake_slack.click(url, headers, body)
    time.sleep(0.3)
    assert published.on("mlwatchd.actions") == []


def test_only_allowed_users_decide(engine_factory, fake_slack, interactivity):
    published = Published()
    engine, _ = engine_factory(
        contain(), publish=published,
        interactivity={"enabled": True, "signing_secret": SIGNING_SECRET,
                       "allowed_users": ["U0LEAD"]})
    url = interactivity(engine)
    engine.submit(build_finding())
    message = _approval_message(fake_slack)
    headers, body = fake_slack.interaction(message, "mlwatchd_approve",
                                           signing_secret=SIGNING_SECRET, user_id="U0INTERN")
    assert fake_slack.click(url, headers, body)[0] == 403
    headers, body = fake_slack.interaction(message, "mlwatchd_approve",
                                           signing_secret=SIGNING_SECRET, user_id="U0LEAD")
    assert fake_slack.click(url, headers, body)[0] == 200
    published.wait_on("mlwatchd.actions", 1)


def test_unanswered_approval_expires(engine_factory, fake_slack):
    published = Published()
    engine, events = engine_factory(contain(), publish=published, approval_timeout=0.5)
    engine.submit(build_finding())
    events.wait_for("approval_expired", timeout=5)
    update = wait_until(lambda: [r for r in fake_slack.delivered if r.endpoint == "chat.update"])
    assert "Expired" in update[0].body["text"]
    assert published.on("mlwatchd.actions") == []


def test_unacknowledged_incident_escalates_to_the_other_route(engine_factory, fake_slack):
    engine, events = engine_factory(contain(after="0.3s"), publish=Published())
    engine.submit(build_finding())
    events.wait_for("incident_escalated", timeout=5)
    oncall = wait_until(lambda: [r for r in fake_slack.delivered
                                 if r.body.get("channel") == "#oncall"])
    assert "thread_ts" not in oncall[0].body  # a full alert in the on-call channel
    assert "HIGH" in oncall[0].body["text"]
    note = wait_until(lambda: [r for r in fake_slack.delivered
                               if "Escalated to page" in r.body.get("text", "")])
    first = next(r for r in fake_slack.delivered if "Approval" not in r.body["text"]
                 and r.body.get("channel") == "#ml-security")
    assert note[0].body["thread_ts"] == first.response.split('"ts": "')[1].split('"')[0]


def test_acknowledged_incident_does_not_escalate(engine_factory, fake_slack, interactivity):
    engine, events = engine_factory(contain(after="1.5s"), publish=Published())
    submitted = time.monotonic()
    url = interactivity(engine)
    engine.submit(build_finding())
    alert = wait_until(lambda: next((r for r in fake_slack.delivered if any(
        e.get("action_id") == "mlwatchd_ack" for b in r.body.get("blocks", [])
        if b.get("type") == "actions" for e in b["elements"])), None))
    headers, body = fake_slack.interaction(alert, "mlwatchd_ack", signing_secret=SIGNING_SECRET,
                                           user_id="U0BOB")
    assert fake_slack.click(url, headers, body)[0] == 200
    events.wait_for("incident_acknowledged")
    wait_until(lambda: [r for r in fake_slack.delivered
                        if "Acknowledged" in r.body.get("text", "")])
    time.sleep(max(0.0, submitted + 1.8 - time.monotonic()))
    assert not events.of("incident_escalated")
    assert not [r for r in fake_slack.delivered if r.body.get("channel") == "#oncall"]
