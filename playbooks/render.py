"""Slack messages for findings: a fallback ``text`` plus Block Kit ``blocks``.

Everything here is a pure function of a :class:`~detectors.findings.Finding`
(and an optional :class:`~playbooks.privacy.Pseudonymizer`), so what reaches a
channel can be tested without a network.

Two rules shape the code, because entity ids, model ids, summaries and evidence
strings all come from events an attacker can choose (their own user name, an
API-key label, a feature name):

* Event-derived text is escaped for Slack mrkdwn (``&``, ``<``, ``>``), which is
  what turns ``<!channel>``, ``<@U123>`` and ``<http://evil|click>`` into inert
  text, and ids are shown in code spans, where Slack neither links URLs nor
  resolves mentions.
* Evidence is shown as statistics only: numbers and short names. Raw feature
  values, payloads and lists of raw values never leave, even if a detector put
  them into its evidence; long strings are dropped, lists and mappings capped.

>>> from detectors.findings import Entity, Finding, Source
>>> f = Finding.build(detector="rate.principal", kind="denial_of_service",
...     severity="high", entity=Entity("principal", "<!channel>"), model_id="m",
...     summary="burst", evidence={"rate": 3.14159, "features": [1.0, 2.0]},
...     atlas=[], event_ts=0.0, sources=[Source("ml.inference", 0, 1)])
>>> render_finding(f).text
'[HIGH] denial_of_service on principal `&lt;!channel&gt;`: burst'
>>> evidence_highlights(f.evidence)
[('rate', '3.142')]
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from detectors.findings import Finding
from playbooks.privacy import (
    Pseudonymizer,
    is_identity_key,
    pseudonymize_evidence,
    pseudonymize_finding,
)

__all__ = [
    "SlackMessage",
    "escape_mrkdwn",
    "evidence_highlights",
    "outside_view",
    "render_alert",
    "render_approval",
    "render_decision",
    "render_finding",
    "render_notice",
]

# Slack's own limits are 150 (header), 3000 (section) and 2000 (field); ours
# are lower because an alert is read on a phone in the middle of the night.
_SUMMARY_MAX: Final = 500
_ID_MAX: Final = 120
_TEXT_MAX: Final = 300
_KEY_MAX: Final = 40
_STRING_MAX: Final = 64  # longer evidence strings look like payloads, not names
_VALUE_MAX: Final = 200
_EVIDENCE_MAX: Final = 8
_LIST_MAX: Final = 5
_ROWS_MAX: Final = 3

_SEVERITY_EMOJI: Final = {
    "info": ":information_source:",
    "low": ":large_blue_circle:",
    "medium": ":large_orange_circle:",
    "high": ":red_circle:",
    "critical": ":rotating_light:",
}

#: Evidence keys that hold model inputs/outputs rather than statistics.
_RAW_KEYS: Final = frozenset(
    {
        "features", "feature_values", "input", "inputs", "prediction", "predictions",
        "probabilities", "label", "labels", "request", "response", "body", "prompt",
        "text", "vector", "query", "values",
    }
)
#: A key containing one of these words (split on ``_ . -``) is raw data too.
_RAW_WORDS: Final = frozenset(
    {"raw", "payload", "payloads", "sample", "samples", "example", "examples",
     "embedding", "embeddings"}
)
_ATLAS_ID: Final = re.compile(r"AML\.T\d{4}(?:\.\d{3})?")
_BROADCAST: Final = re.compile(r"@(?=(?:channel|here|everyone)\b)", re.IGNORECASE)
_WHITESPACE: Final = re.compile(r"\s+")
#: mrkdwn markers with no escape: replaced by look-alikes.
_FORMATTING: Final = str.maketrans({"*": "\u2217", "~": "\u223c", "`": "\u02cb"})
#: An underscore that is not between two word characters can open or close italics.
_EDGE_UNDERSCORE: Final = re.compile(r"(?<![^\W_])_|_(?![^\W_])")


class SlackMessage(NamedTuple):
    """What is posted: ``text`` for notifications and old clients, ``blocks`` for display."""

    text: str
    blocks: list[dict[str, Any]]


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _visible(text: str) -> str:
    """Unicode categories C* and Z* other than the space (bidi controls, zero-width
    characters, NUL ...) shown as U+FFFD: a name must not read as something it is not."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def _inert(value: object, limit: int | None) -> str:
    """One line, invisible and direction-changing characters shown, capped, ``& < >``
    escaped, no broadcasts: safe in mrkdwn and inside a code span."""
    text = _WHITESPACE.sub(" ", str(value)).strip()
    if limit is not None:
        text = _cap(text, limit)
    text = _visible(text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # Bare @channel is only live with link_names, but cost nothing to defuse.
    return _BROADCAST.sub("@\u200b", text)


def escape_mrkdwn(value: object, limit: int | None = None) -> str:
    """``value`` as inert mrkdwn: one line, capped, ``& < >`` escaped, no broadcasts,
    no formatting, no invisible or bidi-control characters.

    Capping happens before escaping so an entity like ``&amp;`` is never cut.
    mrkdwn has no escape character: ``*``, ``~`` and backticks become
    look-alikes (U+2217, U+223C, U+02CB), as does ``_`` where it could open or
    close italics (not inside a word such as ``top_features``).

    >>> escape_mrkdwn("<!here> & <http://evil.example|click> @channel")
    '&lt;!here&gt; &amp; &lt;http://evil.example|click&gt; @\\u200bchannel'
    >>> escape_mrkdwn("*urgent* _now_ ~ok~ `x` top_features")
    '\u2217urgent\u2217 \u02cdnow\u02cd \u223cok\u223c \u02cbx\u02cb top_features'
    """
    text = str(value).translate(_FORMATTING)
    text = _EDGE_UNDERSCORE.sub("\u02cd", text)
    return _inert(text, limit)


def _code(value: object, limit: int = _ID_MAX) -> str:
    """An inline code span: Slack resolves no links, mentions or formatting inside it."""
    text = _inert(str(value).replace("`", "\u02cb"), limit)
    return f"`{text}`" if text else "\u2014"


def _words(key: str) -> set[str]:
    return set(re.split(r"[_.\-\s]+", key.lower()))


def _is_raw_key(key: str) -> bool:
    return key.lower() in _RAW_KEYS or bool(_words(key) & _RAW_WORDS)


def _private(finding: Finding, pseudonymizer: Pseudonymizer | None) -> Finding:
    """The finding as it may leave: identities pseudonymised on the structure, if asked."""
    return finding if pseudonymizer is None else pseudonymize_finding(finding, pseudonymizer)


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) < 10**15:
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float)


def _short_name(value: object) -> str | None:
    """A short string as a code span, or None when it is too long to be a name."""
    if not isinstance(value, str) or len(value) > _STRING_MAX:
        return None
    return _code(value, _STRING_MAX)


def _more(shown: int, total: int) -> str:
    return f" (+{total - shown} more)" if total > shown else ""


def _row(row: Mapping[str, Any]) -> str | None:
    """One ``{"principal": "x", "count": 5}`` row as ``principal=`x` count=5``."""
    parts = []
    for key, value in list(row.items())[:_LIST_MAX]:
        if _is_raw_key(key):
            continue
        if _is_number(value):
            shown: str | None = _number(value)
        else:
            shown = _short_name(value)
        if shown is not None:
            parts.append(f"{escape_mrkdwn(key, _KEY_MAX)}={shown}")
    return " ".join(parts) or None


def _render_value(value: Any) -> str | None:
    if value is None:
        return None
    if _is_number(value):
        return _number(value)
    if isinstance(value, str):
        return _short_name(value)
    if isinstance(value, Sequence):
        items = list(value)
        if not items or all(_is_number(v) for v in items):
            return None  # a list of numbers is raw values, not a statistic
        if all(isinstance(v, str) for v in items):
            names = [_short_name(v) for v in items[:_LIST_MAX]]
            if any(n is None for n in names):
                return None
            return ", ".join(n for n in names if n) + _more(_LIST_MAX, len(items))
        if all(isinstance(v, Mapping) for v in items):
            rows = [r for r in (_row(v) for v in items[:_ROWS_MAX]) if r]
            return "; ".join(rows) + _more(_ROWS_MAX, len(items)) if rows else None
        return None
    if isinstance(value, Mapping):
        # name -> number (per-feature scores, per-principal counts): largest first.
        numeric = [(str(k), v) for k, v in value.items() if _is_number(v)]
        if not numeric:
            return None
        numeric.sort(key=lambda kv: abs(kv[1]) if math.isfinite(kv[1]) else math.inf,
                     reverse=True)
        parts = []
        for name, number in numeric[:_LIST_MAX]:
            shown = _short_name(name) or _code(name, _STRING_MAX)
            parts.append(f"{shown}={_number(number)}")
        return ", ".join(parts) + _more(_LIST_MAX, len(numeric))
    return None


def _highlights(evidence: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in evidence.items():
        if len(out) >= _EVIDENCE_MAX:
            break
        if _is_raw_key(str(key)):
            continue
        shown = _render_value(value)
        if shown is not None:
            out.append((escape_mrkdwn(key, _KEY_MAX), _cap(shown, _VALUE_MAX)))
    return out


def evidence_highlights(
    evidence: Mapping[str, Any], pseudonymizer: Pseudonymizer | None = None
) -> list[tuple[str, str]]:
    """Up to 8 ``(key, shown value)`` pairs of statistics, mrkdwn-safe.

    Numbers are shown with 4 significant digits; short strings, lists of short
    names and name -> number maps are shown capped; raw-data keys, lists of
    numbers and long strings are left out. With ``pseudonymizer``, identities
    are masked as :func:`playbooks.privacy.pseudonymize_finding` masks them.

    >>> evidence_highlights({"psi": {"age": 0.02, "amount": 0.4}, "payload": "x",
    ...                      "window": "5m", "values": [1, 2]})
    [('psi', '`amount`=0.4, `age`=0.02'), ('window', '`5m`')]
    """
    if pseudonymizer is not None:
        evidence = pseudonymize_evidence(evidence, pseudonymizer)
    return _highlights(evidence)


def _atlas(ids: Iterable[str]) -> str:
    shown = []
    for tid in list(ids)[:_LIST_MAX]:
        if _ATLAS_ID.fullmatch(tid):
            shown.append(f"<https://atlas.mitre.org/techniques/{tid}|{tid}>")
        else:
            shown.append(escape_mrkdwn(tid, 32))
    return ", ".join(shown) or "\u2014"


def _plain(text: str) -> str:
    """Detector-chosen names for the plain-text header: letters, digits, ``._-`` only."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "", text)[:60]


def _mrkdwn_section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def render_finding(
    finding: Finding, pseudonymizer: Pseudonymizer | None = None
) -> SlackMessage:
    """The Slack message for ``finding``; principals and IPs pseudonymised if asked."""
    finding = _private(finding, pseudonymizer)
    entity = finding.entity
    entity_id = entity.id
    highlights = _highlights(finding.evidence)
    summary = finding.summary
    severity = finding.severity
    kind = _plain(finding.kind)

    text = (
        f"[{severity.upper()}] {kind} on {_plain(entity.type)} "
        f"{_code(entity_id)}: {escape_mrkdwn(summary, _TEXT_MAX)}"
    )
    fields = [
        f"*Severity*\n{severity}",
        f"*Kind*\n{kind}",
        f"*Detector*\n{_code(finding.detector, 60)}",
        f"*Entity*\n{_plain(entity.type)} {_code(entity_id)}",
        f"*Model*\n{_code(finding.model_id) if finding.model_id else chr(0x2014)}",
        f"*Event time*\n{escape_mrkdwn(finding.ts, 40)}",
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": f"{_SEVERITY_EMOJI.get(severity, '')} {severity.upper()} \u00b7 {kind}",
                "emoji": True,
            },
        },
        _mrkdwn_section(escape_mrkdwn(summary, _SUMMARY_MAX)),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if highlights:
        lines = "\n".join(f"\u2022 {key}: {value}" for key, value in highlights)
        blocks.append(_mrkdwn_section(f"*Evidence*\n{lines}"))
    context = f"ATLAS: {_atlas(finding.atlas)} \u00b7 finding {_code(finding.finding_id, 40)}"
    if finding.sources:
        src = finding.sources[0]
        # The numbers stay whole when a long topic (or replayed file path) is cut;
        # ``#item`` names the event inside a message of several (a CloudTrail record).
        where = f"{_cap(src.topic, 60)}/{src.partition}@{src.offset}"
        if src.item is not None:
            where += f"#{src.item}"
        context += f" \u00b7 source {_code(where, 100)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return SlackMessage(text=text, blocks=blocks)


# -- playbook messages ---------------------------------------------------------
#
# The response engine adds to the finding message: the route's ATLAS
# mitigations, a link-out button, an Acknowledge button, repeat counts, and
# short notices (repeats, resolved, escalated, approvals) posted in the
# alert's thread. Everything event-derived goes through the same escaping and
# masking as above.

_MITIGATION_ID: Final = re.compile(r"AML\.M\d{4}")
_URL_MAX: Final = 2000


def outside_view(
    finding: Finding, pseudonymizer: Pseudonymizer | None = None
) -> dict[str, Any]:
    """Template variables of ``finding`` for destinations outside the security team.

    Principals and IPs are pseudonyms (when a pseudonymizer is given), the
    summary is masked the same way, and ``evidence`` keeps statistics only:
    top-level numbers and name -> number maps under non-raw keys, capped.

    >>> from detectors.findings import Entity, Finding, Source
    >>> f = Finding.build(detector="d", kind="drift", severity="low",
    ...     entity=Entity("model", "m"), model_id="m", summary="s",
    ...     evidence={"psi": 0.3, "features": [1, 2], "payload": "x", "top": {"a": 1}},
    ...     atlas=[], event_ts=0.0, sources=[Source("t", 0, 1)])
    >>> outside_view(f)["evidence"]
    {'psi': 0.3, 'top': {'a': 1}}
    """
    finding = _private(finding, pseudonymizer)
    entity = finding.entity
    evidence: dict[str, Any] = {}
    for key, value in finding.evidence.items():
        if len(evidence) >= _EVIDENCE_MAX:
            break
        key = str(key)
        if _is_raw_key(key) or is_identity_key(key):
            continue
        if _is_number(value) and not isinstance(value, bool):
            evidence[_cap(key, _KEY_MAX)] = value
        elif isinstance(value, Mapping):
            numeric = {
                _cap(str(k), _KEY_MAX): v
                for k, v in list(value.items())[:_LIST_MAX]
                if _is_number(v) and not isinstance(v, bool)
                and (len(str(k)) <= _STRING_MAX)
            }
            if numeric:
                evidence[_cap(key, _KEY_MAX)] = numeric
    return {
        "finding_id": finding.finding_id,
        "ts": finding.ts,
        "detector": finding.detector,
        "kind": finding.kind,
        "severity": finding.severity,
        "summary": _cap(finding.summary, _SUMMARY_MAX),
        "entity.type": entity.type,
        "entity.id": entity.id,
        "model_id": finding.model_id or "",
        "atlas": [a for a in finding.atlas if _ATLAS_ID.fullmatch(a)],
        "evidence": evidence,
    }


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
        for m in ids[:_LIST_MAX]
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
    extra.append(f"Route {_code(route, 60)}")
    blocks.append(_mrkdwn_section("\n".join(extra)))
    elements = []
    if link and link.startswith(("https://", "http://")) and len(link) <= _URL_MAX \
            and not any(c in link for c in "<>|\n "):
        elements.append({"type": "button", "text": {"type": "plain_text", "text":
                         _cap(_plain_label(link_text), 30)}, "url": link,
                         "action_id": "mlwatchd_link"})
    if ack_value:
        elements.append(_button("Acknowledge", "mlwatchd_ack", ack_value))
    if elements:
        blocks.append({"type": "actions", "elements": elements})
    blocks.append(context)
    return SlackMessage(text=message.text, blocks=blocks)


def _plain_label(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip() or "Open"


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
    finding = _private(finding, pseudonymizer)
    entity = finding.entity
    entity_id = entity.id
    kind = _plain(finding.kind)
    head = escape_mrkdwn(headline, _TEXT_MAX)
    text = f"{head}: {kind} on {_plain(entity.type)} {_code(entity_id)}"
    lines = [f"*{head}*: {kind} on {_plain(entity.type)} {_code(entity_id)}"]
    if detail:
        lines.append(escape_mrkdwn(detail, _TEXT_MAX))
    lines.append(f"finding {_code(finding.finding_id, 40)}")
    return SlackMessage(text=text, blocks=[_mrkdwn_section("\n".join(lines))])


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
    ask = (f":raised_hand: *Approval needed* to run {_code(action, 60)} "
           f"({_plain(action_type)}): {escape_mrkdwn(what, _TEXT_MAX)}\n"
           f"_Cancelled if nobody decides by {escape_mrkdwn(expires, 40)}._")
    blocks.append(_mrkdwn_section(ask))
    if approval_id:
        confirm = {
            "title": {"type": "plain_text", "text": "Run this action?"},
            "text": {"type": "plain_text", "text": _visible(_cap(f"{action}: {what}", 300))},
            "confirm": {"type": "plain_text", "text": "Run it"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
        blocks.append({"type": "actions", "block_id": "mlwatchd_approval", "elements": [
            _button("Approve", "mlwatchd_approve", approval_id, "primary", confirm),
            _button("Deny", "mlwatchd_deny", approval_id, "danger"),
        ]})
    else:
        blocks.append(_mrkdwn_section("_Slack interactivity is off: this request can only "
                                      "expire. Enable it to approve from here._"))
    blocks.append(context)
    return SlackMessage(text=f"Approval needed: {base.text}", blocks=blocks)


def render_decision(original: SlackMessage, verdict: str, user: str | None) -> SlackMessage:
    """An approval message after the decision: buttons replaced by who decided what."""
    blocks = [b for b in original.blocks if b.get("block_id") != "mlwatchd_approval"]
    who = f" by <@{user}>" if user and re.fullmatch(r"[UW][A-Z0-9]{2,20}", user) else ""
    note = _mrkdwn_section(f":white_check_mark: *{escape_mrkdwn(verdict, 40)}*{who}")
    blocks.insert(max(0, len(blocks) - 1), note)
    return SlackMessage(text=f"{verdict}: {original.text}", blocks=blocks)
