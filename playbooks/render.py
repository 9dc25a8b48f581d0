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

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from detectors.findings import Finding
from playbooks.privacy import Pseudonymizer

__all__ = [
    "SlackMessage",
    "escape_mrkdwn",
    "evidence_highlights",
    "render_finding",
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
#: Words marking a key whose values identify a person or a host.
_IDENTITY_WORDS: Final = frozenset(
    {"principal", "principals", "ip", "ips", "actor", "actors", "user", "users",
     "caller", "callers", "account", "accounts", "addr", "address", "addresses"}
)

_ATLAS_ID: Final = re.compile(r"AML\.T\d{4}(?:\.\d{3})?")
_BROADCAST: Final = re.compile(r"@(?=(?:channel|here|everyone)\b)", re.IGNORECASE)
_WHITESPACE: Final = re.compile(r"\s+")
_IPV4: Final = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6: Final = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


class SlackMessage(NamedTuple):
    """What is posted: ``text`` for notifications and old clients, ``blocks`` for display."""

    text: str
    blocks: list[dict[str, Any]]


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def escape_mrkdwn(value: object, limit: int | None = None) -> str:
    """``value`` as inert mrkdwn: one line, capped, ``& < >`` escaped, no broadcasts.

    Capping happens before escaping so an entity like ``&amp;`` is never cut.

    >>> escape_mrkdwn("<!here> & <http://evil.example|click> @channel")
    '&lt;!here&gt; &amp; &lt;http://evil.example|click&gt; @\\u200bchannel'
    """
    text = _WHITESPACE.sub(" ", str(value)).strip()
    if limit is not None:
        text = _cap(text, limit)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # Bare @channel is only live with link_names, but cost nothing to defuse.
    return _BROADCAST.sub("@\u200b", text)


def _code(value: object, limit: int = _ID_MAX) -> str:
    """An inline code span: Slack resolves no links or mentions inside it."""
    text = escape_mrkdwn(str(value).replace("`", "\u02cb"), limit)
    return f"`{text}`" if text else "\u2014"


def _words(key: str) -> set[str]:
    return set(re.split(r"[_.\-\s]+", key.lower()))


def _is_raw_key(key: str) -> bool:
    return key.lower() in _RAW_KEYS or bool(_words(key) & _RAW_WORDS)


def _is_identity_key(key: str) -> bool:
    words = _words(key)
    return bool(words & _IDENTITY_WORDS) or key.lower() in {"source_ip", "src_ip", "client_ip"}


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


class _Masker:
    """Replaces principals and IPs by pseudonyms; the identity when no pseudonymizer."""

    def __init__(self, pseudonymizer: Pseudonymizer | None) -> None:
        self._p = pseudonymizer
        self.replaced: set[str] = set()

    def ident(self, value: str, *, identity: bool) -> str:
        if self._p is None or not (identity or _looks_like_ip(value)):
            return value
        self.replaced.add(value)
        return self._p.pseudonym(value)

    def text(self, text: str) -> str:
        """Free text with every known id and every IP-looking token replaced."""
        if self._p is None:
            return text
        p = self._p
        for real in sorted(self.replaced, key=len, reverse=True):
            pattern = rf"(?<![\w.@-]){re.escape(real)}(?![\w@-]|\.\w)"
            text = re.sub(pattern, p.pseudonym(real), text)  # "p-<hex>": no escapes

        def swap(match: re.Match[str]) -> str:
            token = match.group(0)
            return p.pseudonym(token) if _looks_like_ip(token) else token

        return _IPV6.sub(swap, _IPV4.sub(swap, text))


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) < 10**15:
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float)


def _short_name(value: object, masker: _Masker, *, identity: bool) -> str | None:
    """A short string as a code span, or None when it is too long to be a name."""
    if not isinstance(value, str):
        return None
    shown = masker.ident(value, identity=identity)  # a pseudonym is always short
    if shown == value and len(value) > _STRING_MAX:
        return None
    return _code(shown, _STRING_MAX)


def _more(shown: int, total: int) -> str:
    return f" (+{total - shown} more)" if total > shown else ""


def _row(row: Mapping[str, Any], masker: _Masker) -> str | None:
    """One ``{"principal": "x", "count": 5}`` row as ``principal=`x` count=5``."""
    parts = []
    for key, value in list(row.items())[:_LIST_MAX]:
        if _is_raw_key(key):
            continue
        if _is_number(value):
            shown: str | None = _number(value)
        else:
            shown = _short_name(value, masker, identity=_is_identity_key(key))
        if shown is not None:
            parts.append(f"{escape_mrkdwn(key, _KEY_MAX)}={shown}")
    return " ".join(parts) or None


def _render_value(key: str, value: Any, masker: _Masker) -> str | None:
    identity = _is_identity_key(key)
    if value is None:
        return None
    if _is_number(value):
        return _number(value)
    if isinstance(value, str):
        return _short_name(value, masker, identity=identity)
    if isinstance(value, Sequence):
        items = list(value)
        if not items or all(_is_number(v) for v in items):
            return None  # a list of numbers is raw values, not a statistic
        if all(isinstance(v, str) for v in items):
            names = [_short_name(v, masker, identity=identity) for v in items[:_LIST_MAX]]
            if any(n is None for n in names):
                return None
            return ", ".join(n for n in names if n) + _more(_LIST_MAX, len(items))
        if all(isinstance(v, Mapping) for v in items):
            rows = [r for r in (_row(v, masker) for v in items[:_ROWS_MAX]) if r]
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
            shown = _short_name(name, masker, identity=identity) or _code(name, _STRING_MAX)
            parts.append(f"{shown}={_number(number)}")
        return ", ".join(parts) + _more(_LIST_MAX, len(numeric))
    return None


def _highlights(evidence: Mapping[str, Any], masker: _Masker) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in evidence.items():
        if len(out) >= _EVIDENCE_MAX:
            break
        if _is_raw_key(str(key)):
            continue
        shown = _render_value(str(key), value, masker)
        if shown is not None:
            out.append((escape_mrkdwn(key, _KEY_MAX), _cap(shown, _VALUE_MAX)))
    return out


def evidence_highlights(
    evidence: Mapping[str, Any], pseudonymizer: Pseudonymizer | None = None
) -> list[tuple[str, str]]:
    """Up to 8 ``(key, shown value)`` pairs of statistics, mrkdwn-safe.

    Numbers are shown with 4 significant digits; short strings, lists of short
    names and name -> number maps are shown capped; raw-data keys, lists of
    numbers and long strings are left out.

    >>> evidence_highlights({"psi": {"age": 0.02, "amount": 0.4}, "payload": "x",
    ...                      "window": "5m", "values": [1, 2]})
    [('psi', '`amount`=0.4, `age`=0.02'), ('window', '`5m`')]
    """
    return _highlights(evidence, _Masker(pseudonymizer))


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
    masker = _Masker(pseudonymizer)
    entity = finding.entity
    entity_id = masker.ident(entity.id, identity=entity.type in ("principal", "ip"))
    # Evidence first: it teaches the masker which ids to hide in the summary.
    highlights = _highlights(finding.evidence, masker)
    summary = masker.text(finding.summary)
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
        context += f" \u00b7 source {_code(f'{src.topic}/{src.partition}@{src.offset}', 80)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return SlackMessage(text=text, blocks=blocks)
