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
    pseudonymize_evidence,
    pseudonymize_finding,
)

__all__ = [
    "SlackMessage",
    "escape_mrkdwn",
    "evidence_highlights",
    "render_finding",
]

# Slack's own limits are 150 (header), 3000 (section) and 2000 (field); ours
# are lower because an alert is read on a phone in the middle of the night.
SUMMARY_MAX: Final = 500
_ID_MAX: Final = 120
TEXT_MAX: Final = 300
KEY_MAX: Final = 40
STRING_MAX: Final = 64  # longer evidence strings look like payloads, not names
_VALUE_MAX: Final = 200
EVIDENCE_MAX: Final = 8
LIST_MAX: Final = 5
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
ATLAS_ID: Final = re.compile(r"AML\.T\d{4}(?:\.\d{3})?")
_BROADCAST: Final = re.compile(r"@(?=(?:channel|here|everyone)\b)", re.IGNORECASE)
WHITESPACE: Final = re.compile(r"\s+")
#: mrkdwn markers with no escape: replaced by look-alikes.
_FORMATTING: Final = str.maketrans({"*": "\u2217", "~": "\u223c", "`": "\u02cb"})
#: An underscore that is not between two word characters can open or close italics.
_EDGE_UNDERSCORE: Final = re.compile(r"(?<![^\W_])_|_(?![^\W_])")


class SlackMessage(NamedTuple):
    """What is posted: ``text`` for notifications and old clients, ``blocks`` for display."""

    text: str
    blocks: list[dict[str, Any]]


def cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def visible(text: str) -> str:
    """Unicode categories C* and Z* other than the space (bidi controls, zero-width
    characters, NUL ...) shown as U+FFFD: a name must not read as something it is not."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def _inert(value: object, limit: int | None) -> str:
    """One line, invisible and direction-changing characters shown, capped, ``& < >``
    escaped, no broadcasts: safe in mrkdwn and inside a code span."""
    text = WHITESPACE.sub(" ", str(value)).strip()
    if limit is not None:
        text = cap(text, limit)
    text = visible(text)
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


def code_span(value: object, limit: int = _ID_MAX) -> str:
    """An inline code span: Slack resolves no links, mentions or formatting inside it."""
    text = _inert(str(value).replace("`", "\u02cb"), limit)
    return f"`{text}`" if text else "\u2014"


def _words(key: str) -> set[str]:
    return set(re.split(r"[_.\-\s]+", key.lower()))


def is_raw_key(key: str) -> bool:
    return key.lower() in _RAW_KEYS or bool(_words(key) & _RAW_WORDS)


def private_view(finding: Finding, pseudonymizer: Pseudonymizer | None) -> Finding:
    """The finding as it may leave: identities pseudonymised on the structure, if asked."""
    return finding if pseudonymizer is None else pseudonymize_finding(finding, pseudonymizer)


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) < 10**15:
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def is_number(value: object) -> bool:
    return isinstance(value, int | float)


def _short_name(value: object) -> str | None:
    """A short string as a code span, or None when it is too long to be a name."""
    if not isinstance(value, str) or len(value) > STRING_MAX:
        return None
    return code_span(value, STRING_MAX)


def _more(shown: int, total: int) -> str:
    return f" (+{total - shown} more)" if total > shown else ""


def _row(row: Mapping[str, Any]) -> str | None:
    """One ``{"principal": "x", "count": 5}`` row as ``principal=`x` count=5``."""
    parts = []
    for key, value in list(row.items())[:LIST_MAX]:
        if is_raw_key(key):
            continue
        if is_number(value):
            shown: str | None = _number(value)
        else:
            shown = _short_name(value)
        if shown is not None:
            parts.append(f"{escape_mrkdwn(key, KEY_MAX)}={shown}")
    return " ".join(parts) or None


def _render_value(value: Any) -> str | None:
    if value is None:
        return None
    if is_number(value):
        return _number(value)
    if isinstance(value, str):
        return _short_name(value)
    if isinstance(value, Sequence):
        items = list(value)
        if not items or all(is_number(v) for v in items):
            return None  # a list of numbers is raw values, not a statistic
        if all(isinstance(v, str) for v in items):
            names = [_short_name(v) for v in items[:LIST_MAX]]
            if any(n is None for n in names):
                return None
            return ", ".join(n for n in names if n) + _more(LIST_MAX, len(items))
        if all(isinstance(v, Mapping) for v in items):
            rows = [r for r in (_row(v) for v in items[:_ROWS_MAX]) if r]
            return "; ".join(rows) + _more(_ROWS_MAX, len(items)) if rows else None
        return None
    if isinstance(value, Mapping):
        # name -> number (per-feature scores, per-principal counts): largest first.
        numeric = [(str(k), v) for k, v in value.items() if is_number(v)]
        if not numeric:
            return None
        numeric.sort(key=lambda kv: abs(kv[1]) if math.isfinite(kv[1]) else math.inf,
                     reverse=True)
        parts = []
        for name, number in numeric[:LIST_MAX]:
            shown = _short_name(name) or code_span(name, STRING_MAX)
            parts.append(f"{shown}={_number(number)}")
        return ", ".join(parts) + _more(LIST_MAX, len(numeric))
    return None


def _highlights(evidence: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in evidence.items():
        if len(out) >= EVIDENCE_MAX:
            break
        if is_raw_key(str(key)):
            continue
        shown = _render_value(value)
        if shown is not None:
            out.append((escape_mrkdwn(key, KEY_MAX), cap(shown, _VALUE_MAX)))
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
    for tid in list(ids)[:LIST_MAX]:
        if ATLAS_ID.fullmatch(tid):
            shown.append(f"<https://atlas.mitre.org/techniques/{tid}|{tid}>")
        else:
            shown.append(escape_mrkdwn(tid, 32))
    return ", ".join(shown) or "\u2014"


def plain_name(text: str) -> str:
    """Detector-chosen names for the plain-text header: letters, digits, ``._-`` only."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "", text)[:60]


def mrkdwn_section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def render_finding(
    finding: Finding, pseudonymizer: Pseudonymizer | None = None
) -> SlackMessage:
    """The Slack message for ``finding``; principals and IPs pseudonymised if asked."""
    finding = private_view(finding, pseudonymizer)
    entity = finding.entity
    entity_id = entity.id
    highlights = _highlights(finding.evidence)
    summary = finding.summary
    severity = finding.severity
    kind = plain_name(finding.kind)

    text = (
        f"[{severity.upper()}] {kind} on {plain_name(entity.type)} "
        f"{code_span(entity_id)}: {escape_mrkdwn(summary, TEXT_MAX)}"
    )
    fields = [
        f"*Severity*\n{severity}",
        f"*Kind*\n{kind}",
        f"*Detector*\n{code_span(finding.detector, 60)}",
        f"*Entity*\n{plain_name(entity.type)} {code_span(entity_id)}",
        f"*Model*\n{code_span(finding.model_id) if finding.model_id else chr(0x2014)}",
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
        mrkdwn_section(escape_mrkdwn(summary, SUMMARY_MAX)),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if highlights:
        lines = "\n".join(f"\u2022 {key}: {value}" for key, value in highlights)
        blocks.append(mrkdwn_section(f"*Evidence*\n{lines}"))
    context = f"ATLAS: {_atlas(finding.atlas)} \u00b7 finding {code_span(finding.finding_id, 40)}"
    if finding.sources:
        src = finding.sources[0]
        # The numbers stay whole when a long topic (or replayed file path) is cut;
        # ``#item`` names the event inside a message of several (a CloudTrail record).
        where = f"{cap(src.topic, 60)}/{src.partition}@{src.offset}"
        if src.item is not None:
            where += f"#{src.item}"
        context += f" \u00b7 source {code_span(where, 100)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return SlackMessage(text=text, blocks=blocks)
