"""Keyed pseudonyms for principals and IPs in what leaves for chat and webhooks.

The findings topic keeps real ids (it is the security team's own stream); a
Slack channel or a partner's webhook often has a wider audience. A keyed
HMAC gives each id a stable stand-in, so a responder can still see "the same
caller again" and the team can map it back with the key, while anyone without
the key can neither reverse it nor confirm a guess (a plain hash of a user
name or an IPv4 address is brute-forced in seconds).

>>> p = Pseudonymizer(b"0123456789abcdef")
>>> p.pseudonym("mallory")
'p-8ae323e981f7228f'
>>> p.pseudonym("mallory") == p.pseudonym("mallory"), p.pseudonym("mallory") == p.pseudonym("eve")
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from detectors.findings import Entity, Finding

__all__ = ["PSEUDONYM_PREFIX", "Pseudonymizer", "is_identity_key", "looks_like_ip",
           "pseudonymize_evidence", "pseudonymize_finding"]

#: Marks a pseudonym in a message, so nobody mistakes it for a real account name.
PSEUDONYM_PREFIX: Final = "p-"
#: 64 bits: collisions stay negligible for any realistic number of principals.
_HEX_CHARS: Final = 16


class Pseudonymizer:
    """Maps an identifier to ``p-`` plus 16 hex chars of HMAC-SHA256 under ``key``."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("pseudonymizer key must not be empty")
        self._key = bytes(key)

    def pseudonym(self, value: str) -> str:
        """The stable pseudonym of ``value`` under this key."""
        digest = hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return PSEUDONYM_PREFIX + digest[:_HEX_CHARS]

    def __repr__(self) -> str:
        # Never show the key, even in a debugger or a crash report.
        return "Pseudonymizer(key=<redacted>)"


#: Words marking a key whose values identify a person or a host.
_IDENTITY_WORDS: Final = frozenset(
    {"principal", "principals", "ip", "ips", "actor", "actors", "user", "users",
     "caller", "callers", "account", "accounts", "addr", "address", "addresses",
     "client", "clients", "src", "source_ip", "src_ip", "client_ip", "username",
     "usernames", "identity", "identities", "subject", "subjects"}
)
#: Entity types whose ids are identities.
_IDENTITY_ENTITIES: Final = frozenset({"principal", "ip"})
_IPV4: Final = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6: Final = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
#: Evidence nesting walked at most; deeper values are dropped (an identity could hide there).
_DEPTH_MAX: Final = 32


def _words(key: str) -> set[str]:
    return set(re.split(r"[_.\-\s]+", key.lower()))


def is_identity_key(key: str) -> bool:
    """True when an evidence key names a person or a host (``principal``, ``top_users``, ...).

    >>> [is_identity_key(k) for k in ("principal", "top_callers", "source_ip", "psi")]
    [True, True, True, False]
    """
    return bool(_words(key) & _IDENTITY_WORDS) or key.lower() in _IDENTITY_WORDS


def looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


class _Pseudonymisation:
    """One finding's walk: replaces identities and remembers which it replaced."""

    def __init__(self, pseudonymizer: Pseudonymizer) -> None:
        self._p = pseudonymizer
        self.replaced: set[str] = set()

    def ident(self, value: str) -> str:
        self.replaced.add(value)
        return self._p.pseudonym(value)

    def value(self, value: Any, *, identity: bool, row: bool = False, depth: int = 0) -> Any:
        """``value`` with every identity in it replaced, at any depth or position.

        Below an identity key every string is an identity, alone or in lists;
        so are the keys of a name -> value map (``{"alice": 12}``), while a
        row (a mapping in a list, or one with an identity key of its own, as
        ``{"principal": "alice", "share": 0.4}``) keeps its field names.
        Elsewhere only IP addresses are identities, and mappings are judged
        key by key.
        """
        if depth > _DEPTH_MAX:
            return None
        if isinstance(value, str):
            return self.ident(value) if identity or looks_like_ip(value) else value
        if isinstance(value, Mapping):
            names = [str(k) for k in value]
            keys_are_ids = identity and not row and not any(map(is_identity_key, names))
            out: dict[str, Any] = {}
            for name, item in zip(names, value.values(), strict=True):
                shown = self.ident(name) if keys_are_ids or looks_like_ip(name) else name
                out[shown] = self.value(item, identity=identity or is_identity_key(name),
                                        depth=depth + 1)
            return out
        if isinstance(value, list | tuple):
            return [self.value(v, identity=identity, row=True, depth=depth + 1) for v in value]
        return value

    def text(self, text: str) -> str:
        """Free text built from the finding's fields: every replaced id and every IP."""
        p = self._p
        for real in sorted(self.replaced, key=len, reverse=True):
            if not real.strip():
                continue
            pattern = rf"(?<![\w.@-]){re.escape(real)}(?![\w@-]|\.\w)"
            text = re.sub(pattern, p.pseudonym(real), text)  # "p-<hex>": no escapes

        def swap(match: re.Match[str]) -> str:
            token = match.group(0)
            return p.pseudonym(token) if looks_like_ip(token) else token

        return _IPV6.sub(swap, _IPV4.sub(swap, text))


def pseudonymize_evidence(evidence: Mapping[str, Any],
                          pseudonymizer: Pseudonymizer) -> dict[str, Any]:
    """Evidence alone, as :func:`pseudonymize_finding` masks it."""
    masked: dict[str, Any] = _Pseudonymisation(pseudonymizer).value(evidence, identity=False)
    return masked


def pseudonymize_finding(finding: Finding, pseudonymizer: Pseudonymizer) -> Finding:
    """``finding`` with principals and IPs replaced by pseudonyms everywhere.

    Covers the entity (principal or ip), every evidence value under a key
    that names an identity (``principal``, ``top_principals[].principal``,
    ``users``, ``source_ip`` ...) at any depth and position, every value or
    key that is an IP address, and the summary: the summary is composed
    from these fields (e.g. "concentrated on caller X"), so each identity
    found in the structure is replaced in it too, as is any IP address.
    Renderers for Slack, webhooks and PagerDuty start from this finding.

    >>> from detectors.findings import Source
    >>> f = Finding.build(detector="d", kind="drift", severity="low",
    ...     entity=Entity("model", "m"), model_id="m",
    ...     summary="drift concentrated on caller mallory from 10.0.0.7",
    ...     evidence={"attribution": {"principal": "mallory"}},
    ...     atlas=[], event_ts=0.0, sources=[Source("t", 0, 1)])
    >>> g = pseudonymize_finding(f, Pseudonymizer(b"0123456789abcdef"))
    >>> "mallory" in g.summary or "10.0.0.7" in g.summary, g.evidence["attribution"]
    (False, {'principal': 'p-8ae323e981f7228f'})
    """
    walk = _Pseudonymisation(pseudonymizer)
    entity = finding.entity
    if entity.type in _IDENTITY_ENTITIES or looks_like_ip(entity.id):
        entity = Entity(entity.type, walk.ident(entity.id))
    evidence = walk.value(finding.evidence, identity=False)
    return msgspec.structs.replace(finding, entity=entity, evidence=evidence,
                                   summary=walk.text(finding.summary))
