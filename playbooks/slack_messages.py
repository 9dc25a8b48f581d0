"""Slack messages of the response engine, built on the finding message.

The response engine adds to the finding message: the route's ATLAS
mitigations, a link-out button, an Acknowledge button, repeat counts, and
short notices (repeats, resolved, escalated, approvals) posted in the
alert's thread. Everything event-derived goes through the same escaping and
masking as the finding message (:mod:`playbooks.render`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from detectors.findings import Finding
from playbooks.privacy import Pseudonymizer
from playbooks.render import (
    LIST_MAX,
    TEXT_MAX,
    WHITESPACE,
    SlackMessage,
    cap,
    code_span,
    escape_mrkdwn,
    mrkdwn_section,
    plain_name,
    private_view,
    render_finding,
    visible,
)

__all__ = ["render_alert", "render_approval", "render_decision", "render_notice"]

_MITIGATION_ID: Final = re.compile(r"AML\.M\d{4}")
_URL_MAX: Final = 2000


def _button(text: str, action_id: str, value: str, style: str | None = None,
            confirm: dict[str, Any] | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": text, "emoji": True},
        "action_id": action_id,
        "value": value,
    }
    if style:
        button["style"] = style
    if confirm:
        button["confirm"] = confirm
    return button


def _mitigations(ids: Sequence[str]) -> str:
    shown = [
        f"<https://atlas.mitre.org/mitigations/{m}|{m}>"
        for m in ids[:LIST_MAX]
        if _MITIGATION_ID.fullmatch(m)
    ]
    return ", ".join(shown)


def render_alert(
    finding: Finding,
    pseudonymizer: Pseudonymizer | None = None,
    *,
    route: str,
    mitigations: Sequence[str] = (),
    link: str | None = None,
    link_text: str = "Open",
    ack_value: str | None = None,
    repeats: int = 0,
) -> SlackMessage:
    """The finding message plus the route's additions (all optional).

    ``link`` must already be a rendered URL (its values percent-encoded); only
    ``http(s)`` links are shown. ``ack_value`` adds an Acknowledge button.
    """
    message = render_finding(finding, pseudonymizer)
    blocks = list(message.blocks)
    context = blocks.pop()  # keep the context line last
    extra = []
    shown = _mitigations(mitigations)
    if shown:
        extra.append(f"*Mitigations*: {shown}")
    if repeats > 0:
        extra.append(f"_{repeats} similar finding{'s' if repeats != 1 else ''} before this one_")
    extra.append(f"Route {code_span(route, 60)}")
    blocks.append(mrkdwn_section("\n".join(extra)))
    elements = []
    if link and link.startswith(("https://", "http://")) and len(link) <= _URL_MAX \
            and not any(c in link for c in "<>|\n "):
        elements.append({"type": "button", "text": {"type": "plain_text", "text":
                         cap(_plain_label(link_text), 30)}, "url": link,
                         "action_id": "mlwatchd_link"})
    if ack_value:
        elements.append(_button("Acknowledge", "mlwatchd_ack", ack_value))
    if elements:
        blocks.append({"type": "actions", "elements": elements})
    blocks.append(context)
    return SlackMessage(text=message.text, blocks=blocks)


def _plain_label(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip() or "Open"


def render_notice(
    finding: Finding,
    pseudonymizer: Pseudonymizer | None,
    *,
    headline: str,
    detail: str = "",
) -> SlackMessage:
    """A short follow-up (repeats, resolved, escalated, acknowledged) about ``finding``.

    ``headline`` and ``detail`` are the engine's own words (numbers, durations,
    route names); they are escaped all the same.
    """
    finding = private_view(finding, pseudonymizer)
    entity = finding.entity
    entity_id = entity.id
    kind = plain_name(finding.kind)
    head = escape_mrkdwn(headline, TEXT_MAX)
    text = f"{head}: {kind} on {plain_name(entity.type)} {code_span(entity_id)}"
    lines = [f"*{head}*: {kind} on {plain_name(entity.type)} {code_span(entity_id)}"]
    if detail:
        lines.append(escape_mrkdwn(detail, TEXT_MAX))
    lines.append(f"finding {code_span(finding.finding_id, 40)}")
    return SlackMessage(text=text, blocks=[mrkdwn_section("\n".join(lines))])


def render_approval(
    finding: Finding,
    pseudonymizer: Pseudonymizer | None,
    *,
    route: str,
    action: str,
    action_type: str,
    what: str,
    approval_id: str | None,
    expires: str,
    mitigations: Sequence[str] = (),
) -> SlackMessage:
    """The finding plus "approve running ``action``?" with Approve / Deny buttons.

    Without ``approval_id`` (interactivity off) the message says so instead of
    showing buttons that nothing would answer.
    """
    base = render_alert(finding, pseudonymizer, route=route, mitigations=mitigations)
    blocks = list(base.blocks)
    context = blocks.pop()
    ask = (f":raised_hand: *Approval needed* to run {code_span(action, 60)} "
           f"({plain_name(action_type)}): {escape_mrkdwn(what, TEXT_MAX)}\n"
           f"_Cancelled if nobody decides by {escape_mrkdwn(expires, 40)}._")
    blocks.append(mrkdwn_section(ask))
    if approval_id:
        confirm = {
            "title": {"type": "plain_text", "text": "Run this action?"},
            "text": {"type": "plain_text", "text": visible(cap(f"{action}: {what}", 300))},
            "confirm": {"type": "plain_text", "text": "Run it"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
        blocks.append({"type": "actions", "block_id": "mlwatchd_approval", "elements": [
            _button("Approve", "mlwatchd_approve", approval_id, "primary", confirm),
            _button("Deny", "mlwatchd_deny", approval_id, "danger"),
        ]})
    else:
        blocks.append(mrkdwn_section("_Slack interactivity is off: this request can only "
                                      "expire. Enable it to approve from here._"))
    blocks.append(context)
    return SlackMessage(text=f"Approval needed: {base.text}", blocks=blocks)


def render_decision(original: SlackMessage, verdict: str, user: str | None) -> SlackMessage:
    """An approval message after the decision: buttons replaced by who decided what."""
    blocks = [b for b in original.blocks if b.get("block_id") != "mlwatchd_approval"]
    who = f" by <@{user}>" if user and re.fullmatch(r"[UW][A-Z0-9]{2,20}", user) else ""
    note = mrkdwn_section(f":white_check_mark: *{escape_mrkdwn(verdict, 40)}*{who}")
    blocks.insert(max(0, len(blocks) - 1), note)
    return SlackMessage(text=f"{verdict}: {original.text}", blocks=blocks)
