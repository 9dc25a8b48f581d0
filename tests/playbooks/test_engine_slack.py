"""The engine against the fake Slack: messages, dedup, threads, retries, restarts, dry run."""

from __future__ import annotations

import json
import time
from typing import Any

from pb_helpers import PSEUDO_KEY, build_finding, wait_until

from daemon.lab.fake_slack import Reply
from detectors.findings import Entity
from playbooks.privacy import Pseudonymizer

ALERT_ONLY = """
actions:
  chat:
    type: slack
    params:
      link: "https://dash.example.com/d?finding={finding_id}&who={entity.id}"
routes:
  - name: extraction
    match: {kinds: [model_extraction], min_severity: high}
    actions: [chat]
    mitigations: [AML.M0004, AML.M0019]
    dedup: {key: "{kind}:{entity.id}", window: %(window)s}
    realert: %(realert)s
"""


def playbook(window: str = "30m", realert: str = "10m") -> str:
    return ALERT_ONLY % {"window": window, "realert": realert}


def _texts(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(_texts(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(_texts(v) for v in value)
    return ""


def test_alert_is_block_kit_with_mitigations_link_and_pseudonyms_and_no_raw_values(
        engine_factory, fake_slack):
    engine, events = engine_factory(playbook())
    finding = build_finding()
    engine.submit(finding)
    events.wait_for("action_delivered")
    [req] = fake_slack.delivered
    assert req.endpoint == "chat.postMessage" and req.body["channel"] == "#ml-security"
    everything = _texts(req.body["blocks"]) + req.body["text"]
    alias = Pseudonymizer(PSEUDO_KEY).pseudonym("mallory")
    for expected in (alias, "HIGH", "model_extraction", "AML.T0024.002", "AML.M0004",
                     "AML.M0019", "shapiro_w", "fraud-scorer", finding.finding_id):
        assert expected in everything
    raw = req.raw.decode()
    for secret in ("mallory", "10.1.2.3", "secret-row-data", "5.1", "3.5"):
        assert secret not in raw
    [button] = [e for b in req.body["blocks"] if b["type"] == "actions"
                for e in b["elements"] if e.get("url")]
    # Link values are percent-encoded pseudonyms, never the real principal.
    assert button["url"] == (f"https://dash.example.com/d?finding={finding.finding_id}"
                             f"&who={alias}")
    assert any(e.get("action_id") == "mlwatchd_ack" for b in req.body["blocks"]
               if b["type"] == "actions" for e in b["elements"])


def test_event_text_is_escaped(engine_factory, fake_slack):
    engine, events = engine_factory(playbook(), pseudonymize=False)
    engine.submit(build_finding(entity=Entity("principal", "<!channel>"),
                                summary="<http://evil.example|click> @here"))
    events.wait_for("action_delivered")
    raw = fake_slack.delivered[0].raw.decode()
    assert "<!channel>" not in raw and "<http://evil" not in raw
    assert "&lt;!channel&gt;" in raw


def test_repeats_are_summarised_in_the_thread_then_resolved(engine_factory, fake_slack):
    engine, events = engine_factory(playbook(window="0.6s", realert="0.3s"))
    submitted = time.monotonic()
    for _ in range(5):
        engine.submit(build_finding())  # same key, fresh finding ids
    assert time.monotonic() - submitted < 0.5
    events.wait_for("incident_resolved", timeout=10)
    events.wait_for("action_delivered", 3)
    posts = fake_slack.delivered
    assert len(posts) == 3, [p.body.get("text") for p in posts]
    first, summary, resolved = posts
    assert "thread_ts" not in first.body
    ts = json.loads(first.response)["ts"]
    assert summary.body["thread_ts"] == ts and resolved.body["thread_ts"] == ts
    assert "4 more in the last 1 minute" in summary.body["text"]
    assert "Resolved" in resolved.body["text"]


def test_a_more_severe_finding_alerts_again_in_the_thread(engine_factory, fake_slack):
    engine, events = engine_factory(playbook())
    engine.submit(build_finding())
    events.wait_for("action_delivered")
    engine.submit(build_finding(severity="critical"))
    events.wait_for("action_delivered", 2)
    first, second = fake_slack.delivered
    assert second.body["thread_ts"] == json.loads(first.response)["ts"]
    assert "CRITICAL" in second.body["text"]


def test_redelivered_finding_is_not_posted_twice(engine_factory, fake_slack):
    engine, events = engine_factory(playbook())
    finding = build_finding()
    engine.submit(finding)
    engine.submit(finding)
    events.wait_for("action_delivered")
    assert events.of("finding_duplicate")
    time.sleep(0.2)
    assert len(fake_slack.requests) == 1


def test_rate_limited_and_failing_slack_never_blocks_submit_and_loses_nothing(
        engine_factory, fake_slack):
    fake_slack.script(Reply.rate_limited(retry_after=1), Reply.server_error(503),
                      Reply.server_error(502))
    engine, events = engine_factory(playbook(), workers=1)
    started = time.monotonic()
    findings = [build_finding(entity=Entity("principal", f"user-{i}")) for i in range(3)]
    for f in findings:
        engine.submit(f)
    assert time.monotonic() - started < 0.5  # submit only writes the local outbox
    events.wait_for("action_delivered", 3, timeout=15)
    statuses = [r.status for r in fake_slack.requests]
    assert statuses[:3] == [429, 503, 502] and statuses.count(200) == 3
    # The 429 paused Slack for its Retry-After: nothing went out in between.
    reqs = fake_slack.requests
    assert reqs[1].at - reqs[0].at >= 0.95
    retries = events.of("action_retry")
    assert [r["status"] for r in retries] == [429, 503, 502]


def test_permanent_failure_is_reported_not_retried(engine_factory, fake_slack):
    fake_slack.script(Reply.failure("channel_not_found"))
    engine, events = engine_factory(playbook())
    engine.submit(build_finding())
    [failed] = events.wait_for("action_failed")
    assert "channel_not_found" in failed["error"] and failed["route"] == "extraction"
    assert len(fake_slack.requests) == 1
    assert engine.outbox.jobs("status = 'failed'")


def test_retries_exhausted_are_reported(engine_factory, fake_slack):
    fake_slack.script(*[Reply.server_error(500)] * 3)
    engine, events = engine_factory(playbook(), max_attempts=3)
    engine.submit(build_finding())
    [failed] = events.wait_for("action_failed")
    assert failed["error"].startswith("gave up") and failed["attempt"] == 3


def test_restart_on_the_same_outbox_resends_nothing_and_finishes_the_rest(
        engine_factory, fake_slack):
    delivered = build_finding(entity=Entity("principal", "a"))
    waiting = build_finding(entity=Entity("principal", "b"))
    engine, events = engine_factory(playbook())
    engine.submit(delivered)
    events.wait_for("action_delivered")
    fake_slack.script(*[Reply.server_error(503)] * 50)  # Slack goes down
    engine.submit(waiting)
    events.wait_for("action_retry")
    assert engine.stop(timeout=0.5) == 1  # the waiting one stays in the outbox
    fake_slack.clear()  # Slack is back

    engine2, events2 = engine_factory(playbook())
    engine2.submit(delivered)  # the consumer redelivers an uncommitted batch
    engine2.submit(waiting)
    events2.wait_for("action_delivered")
    time.sleep(0.3)
    texts = [r.body["text"] for r in fake_slack.delivered]
    assert len(texts) == 1 and "`p-" in texts[0]
    assert engine2.outbox.count("status = 'delivered'") == 2


def test_dry_run_calls_nothing_and_audits_what_it_would_do(engine_factory, fake_slack,
                                                           receiver):
    from pb_helpers import Published

    published = Published()
    yaml_text = f"""
    actions:
      chat: {{type: slack}}
      hook:
        type: webhook
        params: {{url: "{receiver.url}/hook", secret_env: PB_TEST_SECRET}}
      block:
        type: kafka
        requires_approval: true
        params: {{action: block_principal, ttl: 1s}}
    routes:
      - name: all
        match: {{}}
        actions: [chat, hook, block]
    """
    import os

    os.environ["PB_TEST_SECRET"] = "s3cret"
    engine, events = engine_factory(yaml_text, publish=published, dry_run=True)
    engine.submit(build_finding())
    events.wait_for("action_dry_run", 3)
    time.sleep(0.3)
    assert fake_slack.requests == [] and receiver.requests == []
    assert published.on("mlwatchd.actions") == []
    audit = published.wait_on("mlwatchd.audit", 3)
    dry = [a for a in audit if a["event"] == "action_dry_run"]
    assert {a["action"] for a in dry} == {"chat", "hook", "block"}
    assert "s3cret" not in json.dumps(audit) and "mallory" not in json.dumps(dry)


def test_submit_after_stop_is_refused_and_reported(engine_factory):
    engine, events = engine_factory(playbook())
    engine.stop(timeout=0.5)
    engine.submit(build_finding())
    assert events.of("submit_failed")


def test_unmatched_findings_are_reported(engine_factory):
    engine, events = engine_factory(playbook())
    engine.submit(build_finding(kind="drift", detector="drift.features"))
    wait_until(lambda: events.of("finding_unmatched"))


def test_after_a_restart_repeats_still_go_into_the_first_messages_thread(
        engine_factory, fake_slack):
    engine, events = engine_factory(playbook(window="30m", realert="0.2s"))
    engine.submit(build_finding())
    events.wait_for("action_delivered")
    engine.stop(timeout=1.0)
    engine2, events2 = engine_factory(playbook(window="30m", realert="0.2s"))
    engine2.submit(build_finding())
    engine2.submit(build_finding())
    events2.wait_for("action_delivered", timeout=5)
    first, summary = fake_slack.delivered
    assert summary.body["thread_ts"] == json.loads(first.response)["ts"]
    assert "2 more in the last" in summary.body["text"]


def test_shipped_playbooks_handle_every_kind_and_contain_nothing_unapproved(
        tmp_path, fake_slack):
    from pb_helpers import Events, Published

    from detectors.findings import KINDS
    from playbooks.config import PlaybookSettings, SlackConnection, default_playbook_dir
    from playbooks.engine import ResponseEngine
    from playbooks.model import load_playbooks

    published, events = Published(), Events()
    settings = PlaybookSettings.model_validate({
        "outbox_path": str(tmp_path / "o.sqlite3"), "tick_interval": 0.05,
        "interactivity": {"enabled": True, "signing_secret": "x" * 32}})
    engine = ResponseEngine(load_playbooks(default_playbook_dir()), settings,
                            slack=SlackConnection(webhook_url=fake_slack.webhook_url),
                            publish=published, on_event=events)
    engine.start()
    entity = {"data_poisoning": Entity("resource", "dataset:train-2026"),
              "model_tampering": Entity("model", "fraud-scorer"),
              "drift": Entity("model", "fraud-scorer")}
    try:
        for kind in sorted(KINDS):
            engine.submit(build_finding(kind=kind, detector=f"{kind}.test", severity="critical",
                                        entity=entity.get(kind, Entity("principal", "mallory"))))
        # Every kind reaches Slack (an alert, plus an approval request for containment).
        wait_until(lambda: len(fake_slack.delivered) >= len(KINDS) + 7, timeout=10)
        time.sleep(0.3)
    finally:
        engine.stop(timeout=2.0)
    texts = [r.body["text"] for r in fake_slack.delivered]
    assert sum(t.startswith("Approval needed") for t in texts) == 7
    assert not events.of("action_failed")
    assert published.on("mlwatchd.actions") == []  # nothing contained without approval


def test_stop_without_start_keeps_work_for_the_next_process_and_is_idempotent(
        engine_factory, fake_slack):
    engine, _ = engine_factory(playbook(), start=False)
    engine.submit(build_finding())
    started = time.monotonic()
    assert engine.stop(timeout=5.0) == 1 and engine.stop(timeout=5.0) == 1
    assert time.monotonic() - started < 1.0
    _, events2 = engine_factory(playbook())
    events2.wait_for("action_delivered")
    assert len(fake_slack.delivered) == 1
