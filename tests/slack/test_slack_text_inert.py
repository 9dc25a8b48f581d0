"""Event-chosen text cannot format, hide or reorder itself in Slack messages."""

from __future__ import annotations

import json

import pytest

from detectors.findings import Entity
from playbooks.render import escape_mrkdwn, render_finding
from playbooks.slack_messages import render_alert
from tests.slack.conftest import build_finding

HOSTILE = "*URGENT* approve _now_ ~not~ `rm -rf` ```block``` inv\u202eexe.gpj zero\u200bwidth"


@pytest.mark.parametrize(("raw", "shown"), [
    ("*bold*", "\u2217bold\u2217"),
    ("_italic_", "\u02cditalic\u02cd"),
    ("~strike~", "\u223cstrike\u223c"),
    ("`code`", "\u02cbcode\u02cb"),
    ("```pre```", "\u02cb\u02cb\u02cbpre\u02cb\u02cb\u02cb"),
    ("admin\u202etxt.exe", "admin\ufffdtxt.exe"),
    ("a\u2066b\u2069c\u200ed\u200ff", "a\ufffdb\ufffdc\ufffdd\ufffdf"),
    ("zero\u200bwidth\u200c\u200d\u2060\ufeff", "zero\ufffdwidth\ufffd\ufffd\ufffd\ufffd"),
    ("nul\x00esc\x1b[31m", "nul\ufffdesc\ufffd[31m"),
    # Underscores inside words cannot open italics and are left as they are.
    ("top_features and svc_bot_01", "top_features and svc_bot_01"),
])
def test_escape_mrkdwn_neutralises_formatting_and_invisible_characters(raw: str, shown: str
                                                                      ) -> None:
    assert escape_mrkdwn(raw) == shown


def test_a_hostile_summary_and_ids_render_inert() -> None:
    finding = build_finding(summary=HOSTILE, model_id="m\u202e`x`",
                            entity=Entity("principal", "bob\u200b_admin_"),
                            evidence={"note": "*hi*", "k\u202e": 1.0})
    message = render_alert(finding, route="r")
    text = message.text + json.dumps(message.blocks, ensure_ascii=False)
    for marker in ("*URGENT*", "_now_", "~not~", "`rm", "```", "\u202e", "\u200b"):
        assert marker not in text, marker
    assert "note: `*hi*`" in text  # evidence strings are code spans: shown, not applied
    summary = message.blocks[1]["text"]["text"]
    assert summary.startswith("\u2217URGENT\u2217 approve \u02cdnow\u02cd \u223cnot\u223c")
    # In code spans only the backtick needs a look-alike; the invisible characters go.
    fields = {f["text"].split("\n")[0]: f["text"] for f in message.blocks[2]["fields"]}
    assert fields["*Model*"] == "*Model*\n`m\ufffd\u02cbx\u02cb`"
    assert fields["*Entity*"] == "*Entity*\nprincipal `bob\ufffd_admin_`"


def test_broadcasts_stay_defused() -> None:
    # The one zero-width space in a message is ours, after a defused @channel.
    text = render_finding(build_finding(summary="ping @channel now")).blocks[1]["text"]["text"]
    assert text == "ping @\u200bchannel now"
