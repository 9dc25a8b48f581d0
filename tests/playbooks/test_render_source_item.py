"""A finding's source in Slack names the event inside its message (``Source.item``), escaped."""

from __future__ import annotations

from detectors.findings import Entity, Finding, Source
from playbooks.render import render_finding
from playbooks.slack_messages import render_alert


def _finding(source: Source) -> Finding:
    return Finding.build(detector="access.privilege_grant", kind="suspicious_access",
                         severity="critical", entity=Entity("principal", "mallory"),
                         model_id=None, summary="mallory attached AdministratorAccess to self",
                         evidence={"self_grant": True}, atlas=[], event_ts=1772445600.0,
                         sources=[source])


def _context(message_blocks: list[dict[str, object]]) -> str:
    block = message_blocks[-1]
    assert block["type"] == "context"
    return str(block["elements"][0]["text"])  # type: ignore[index]


def test_the_source_names_the_record_inside_a_cloudtrail_message() -> None:
    message = render_finding(_finding(Source("aws.cloudtrail", 2, 12, 3)))
    assert "source `aws.cloudtrail/2@12#3`" in _context(message.blocks)
    alert = render_alert(_finding(Source("aws.cloudtrail", 2, 12, 3)), route="r")
    assert "`aws.cloudtrail/2@12#3`" in _context(alert.blocks)


def test_a_source_of_one_event_per_message_is_shown_as_before() -> None:
    message = render_finding(_finding(Source("ml.audit", 0, 7)))
    context = _context(message.blocks)
    assert "source `ml.audit/0@7`" in context and "#" not in context.split("source")[1]


def test_a_replayed_file_name_is_escaped_and_a_long_one_keeps_the_item() -> None:
    hostile = Source("logs/<!channel>*x*.jsonl", 0, 5, 0)
    context = _context(render_finding(_finding(hostile)).blocks)
    assert "<!channel>" not in context and "&lt;!channel&gt;" in context
    long = Source("/data/" + "a" * 300 + ".jsonl", 0, 41, 9)
    context = _context(render_finding(_finding(long)).blocks)
    assert context.endswith("/0@41#9`") and len(context) < 300
