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
from typing import Final

__all__ = ["PSEUDONYM_PREFIX", "Pseudonymizer"]

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
