"""Rendering findings for Slack: escaping, pseudonyms, statistics only, caps."""

from __future__ import annotations

import json

import pytest

from detectors.findings import Entity
from playbooks.privacy import Pseudonymizer
from playbooks.render import escape_mrkdwn, evidence_highlights, render_finding
from tests.slack.conftest import build_finding

KEY = Pseudonymizer(b"render-test-key-000")


def _all_text(message) -> str:
    return message.text + "\n" + json.dumps(message.blocks, ensure_ascii=False)


@pytest.mark.parametrize(("raw", "escaped"), [
    ("a & b", "a &amp; b"),
    ("<!channel>", "&lt;!channel&gt;"),
    ("<@U123|boss>", "&lt;@U123|boss&gt;"),
    ("<http://evil.example|click>", "&lt;http://evil.example|click&gt;"),
    ("&lt;", "&amp;lt;"),  # an attacker's pre-escaped text stays literal
    ("ping @here now", "ping @\u200bhere now"),
    ("two\nlines\tand  spaces", "two lines and spaces"),
])
def test_escape_mrkdwn_makes_control_sequences_inert(raw, escaped):
    assert escape_mrkdwn(raw) == escaped


def test_escape_caps_before_escaping_so_entities_are_never_cut():
    out = escape_mrkdwn("<" * 50, limit=10)
    assert out == "&lt;" * 9 + "\u2026"


def test_blocks_have_the_expected_shape_and_respect_slack_limits():
    finding = build_finding(summary="s" * 5000, model_id="m" * 500,
                            entity=Entity("principal", "p" * 500), atlas=["AML.T0024.002"])
    msg = render_finding(finding)
    types = [b["type"] for b in msg.blocks]
    assert types == ["header", "section", "section", "section", "context"]
    assert len(msg.blocks[0]["text"]["text"]) <= 150
    sections = [b for b in msg.blocks if b["type"] == "section" and "text" in b]
    assert all(len(b["text"]["text"]) <= 3000 for b in sections)
    assert all(len(f["text"]) <= 2000 for f in msg.blocks[2]["fields"])
    assert len(msg.blocks[2]["fields"]) <= 10
    assert len(msg.text) <= 500
    context = msg.blocks[-1]["elements"][0]["text"]
    assert "<https://atlas.mitre.org/techniques/AML.T0024.002|AML.T0024.002>" in context
    assert finding.finding_id in context and "ml.inference/0@" in context


def test_ids_are_shown_in_code_spans_where_slack_links_nothing():
    finding = build_finding(entity=Entity("principal", "http://evil.example/`x`"))
    fields = render_finding(finding).blocks[2]["fields"]
    entity = next(f["text"] for f in fields if f["text"].startswith("*Entity*"))
    assert entity == "*Entity*\nprincipal `http://evil.example/\u02cbx\u02cb`"


def test_atlas_ids_that_are_not_atlas_ids_are_not_linked():
    msg = render_finding(build_finding(atlas=["<http://evil|AML.T0001>"]))
    context = msg.blocks[-1]["elements"][0]["text"]
    assert "<http://evil" not in context and "&lt;http://evil|AML.T0001&gt;" in context


def test_without_pseudonymizer_real_ids_are_shown():
    msg = render_finding(build_finding(entity=Entity("principal", "alice"),
                                       evidence={"source_ip": "10.0.0.1"}))
    assert "`alice`" in msg.text and "10.0.0.1" in _all_text(msg)


def test_pseudonymizer_hides_principals_and_ips_everywhere():
    finding = build_finding(
        entity=Entity("ip", "2001:db8::7"),
        summary="2001:db8::7 and 198.51.100.4 probed as mallory",
        evidence={"count": 3, "actor": "mallory", "top_ips": {"198.51.100.4": 30, "::1": 2},
                  "resource": "dataset:train"},
    )
    text = _all_text(render_finding(finding, KEY))
    for real in ("2001:db8::7", "198.51.100.4", "mallory", "::1"):
        assert real not in text
    assert KEY.pseudonym("2001:db8::7") in text and KEY.pseudonym("mallory") in text
    assert "dataset:train" in text  # resources are not personal data


def test_model_and_resource_entities_are_not_pseudonymised():
    msg = render_finding(build_finding(entity=Entity("model", "fraud-scorer")), KEY)
    assert "`fraud-scorer`" in msg.text


def test_evidence_keeps_statistics_and_drops_raw_values():
    shown = dict(evidence_highlights({
        "observed": 0.123456, "count": 12, "flag": True, "nothing": None,
        "features": {"a": 1.5}, "prediction": 1, "raw_rows": [[1, 2]], "sample_0": "v",
        "embedding": [0.1] * 8, "window": "5m", "recent": [0.5, 0.6],
        "long": "y" * 65, "mixed": [1, "a"], "nested": {"a": {"b": 1}},
        "top_features": ["amount", "age"],
    }))
    assert shown == {
        "observed": "0.1235", "count": "12", "flag": "true", "window": "`5m`",
        "top_features": "`amount`, `age`",
    }


def test_evidence_is_capped_in_count_and_length():
    many = {f"k{i}": i for i in range(20)}
    assert len(evidence_highlights(many)) == 8
    shown = dict(evidence_highlights({"names": [f"f{i}" for i in range(30)],
                                      "scores": {f"f{i}": i for i in range(30)}}))
    assert shown["names"].endswith("(+25 more)")
    assert shown["scores"].startswith("`f29`=29, `f28`=28")
    assert shown["scores"].endswith("(+25 more)")


def test_evidence_rows_render_compactly_and_pseudonymise_identity_columns():
    shown = dict(evidence_highlights(
        {"top_principals": [{"principal": "bob", "count": 40, "payload": "zzz"}]}, KEY))
    assert shown == {"top_principals": f"principal=`{KEY.pseudonym('bob')}` count=40"}


def test_evidence_keys_from_events_are_escaped():
    shown = evidence_highlights({"psi": {"<!channel>": 0.3}})
    assert shown == [("psi", "`&lt;!channel&gt;`=0.3")]
