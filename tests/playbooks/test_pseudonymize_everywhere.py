"""With pseudonymisation on, no real principal or IP reaches Slack, webhooks or PagerDuty.

The finding is built the way the telemetry detectors build theirs: the
summary names the caller ("concentrated on caller X", composed from the
attribution evidence), and identities sit past the eighth evidence field and
deep inside nested rows.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pb_helpers import PSEUDO_KEY, Receiver, build_finding

from daemon.lab.fake_slack import FakeSlack
from detectors.findings import Entity, Finding
from detectors.telemetry.features import scope_phrase
from playbooks.outside import outside_view
from playbooks.privacy import Pseudonymizer, pseudonymize_finding
from playbooks.slack_messages import render_alert

REAL = ("mallory.ops", "trudy", "oscar", "eve-admin", "walter", "10.9.8.7", "192.168.4.4",
        "2001:db8::17", "peggy")


def _attributed_finding() -> Finding:
    attribution: dict[str, Any] = {"scope": "single_principal", "principal": "mallory.ops",
                   "principals_in_window": 4,
                   "top_principals": [{"principal": "mallory.ops", "share": 0.61},
                                      {"principal": "trudy", "share": 0.2}]}
    evidence: dict[str, Any] = {f"stat_{i}": i / 10 for i in range(9)}  # nine fields first
    evidence.update({
        "actor": "eve-admin",
        "per_user": {"oscar": 14, "walter": 3},
        "source_ip": "10.9.8.7",
        "attribution": attribution,
        "clients": [{"addr": "192.168.4.4", "requests": 9}],
        "window": {"seen_from": ["2001:db8::17"], "deep": [[{"caller": "peggy"}]]},
        "scope_note": "single_principal",
    })
    return build_finding(
        entity=Entity("model", "fraud-scorer"),
        summary=f"Input drift on fraud-scorer (psi 0.41), {scope_phrase(attribution)}; "
                "check the upstream data and that caller's traffic.",
        evidence=evidence)


def test_the_structured_finding_is_pseudonymised_at_any_depth() -> None:
    p = Pseudonymizer(PSEUDO_KEY)
    finding = _attributed_finding()
    masked = pseudonymize_finding(finding, p)
    text = json.dumps({"summary": masked.summary, "evidence": masked.evidence,
                       "entity": masked.entity.id})
    for real in REAL:
        assert real not in text, real
    assert f"concentrated on caller {p.pseudonym('mallory.ops')};" in masked.summary
    ev = masked.evidence
    assert ev["attribution"]["top_principals"][1] == {"principal": p.pseudonym("trudy"),
                                                      "share": 0.2}
    assert ev["per_user"] == {p.pseudonym("oscar"): 14, p.pseudonym("walter"): 3}
    assert ev["window"]["deep"] == [[{"caller": p.pseudonym("peggy")}]]
    # Statistics and non-identity words are untouched; the original is not mutated.
    assert ev["stat_3"] == 0.3 and ev["attribution"]["scope"] == "single_principal"
    assert ev["scope_note"] == "single_principal" and masked.entity.id == "fraud-scorer"
    assert finding.evidence["actor"] == "eve-admin"
    assert "mallory.ops" in finding.summary


def test_a_principal_entity_is_pseudonymised_in_every_rendering() -> None:
    p = Pseudonymizer(PSEUDO_KEY)
    finding = _attributed_finding()
    finding = build_finding(evidence=finding.evidence, summary=finding.summary,
                            entity=Entity("principal", "mallory.ops"))
    slack = render_alert(finding, p, route="r")
    view = outside_view(finding, p)
    text = json.dumps([slack.text, slack.blocks, view])
    for real in REAL:
        assert real not in text, real
    assert view["entity.id"] == p.pseudonym("mallory.ops")


def _playbook(receiver_url: str) -> str:
    return f"""
    actions:
      chat:
        type: slack
      hook:
        type: webhook
        params:
          url: "{receiver_url}/hook"
          secret_env: PB_HOOK_SECRET
          timeout: 2s
          body:
            title: "{{entity.type}} {{entity.id}}: {{summary}}"
            evidence: "{{evidence}}"
      page:
        type: pagerduty
        params:
          url: "{receiver_url}/v2/enqueue"
          routing_key_env: PB_PD_KEY
    routes:
      - name: everywhere
        match: {{}}
        actions: [chat, hook, page]
    """


@pytest.fixture(autouse=True)
def _pd_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PB_PD_KEY", "R0UTINGKEY0000000000000000000000")
    monkeypatch.setenv("PB_HOOK_SECRET", "whsec-test-0123456789")


def test_no_real_identity_reaches_slack_webhook_or_pagerduty(
        engine_factory: Any, fake_slack: FakeSlack, receiver: Receiver) -> None:
    engine, events = engine_factory(_playbook(receiver.url))
    engine.submit(_attributed_finding())
    events.wait_for("action_delivered", 3)
    [post] = fake_slack.delivered
    sent = [post.text_of_everything()] + [r.body.decode() for r in receiver.requests]
    assert len(sent) == 3
    alias = Pseudonymizer(PSEUDO_KEY).pseudonym("mallory.ops")
    for text in sent:
        for real in REAL:
            assert real not in text, (real, text[:2000])
        assert f"caller {alias}" in text
