"""Secrets masked by value, wherever they turn up.

A configured secret (a Slack webhook URL or bot token, a webhook's URL, header
values and signing secret, a PagerDuty routing key, signing keys) can end up
in the text of an exception: urllib and slack-sdk quote the URL they could not
open. From there it would reach a log line, the outbox's ``last_error`` and
the audit topic. Masking fields by *name* misses that, and hides harmless
fields such as ``idempotency_key``; a :class:`Redactor` replaces every
occurrence of each secret's *value* instead.

:data:`REDACTOR` is the process's one instance: the daemon feeds it the
configured secrets at start, the response engine its playbooks' secrets, and
the log pipeline runs its :meth:`Redactor.processor`.

>>> r = Redactor(["https://hooks.slack.com/services/T0/B0/abcdefgh"])
>>> r.redact("cannot open https://hooks.slack.com/services/T0/B0/abcdefgh: refused")
'cannot open <redacted>: refused'
>>> r.redact({"idempotency_key": "f1:route:chat", "n": 3})
{'idempotency_key': 'f1:route:chat', 'n': 3}
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, Final
from urllib.parse import quote, urlsplit

__all__ = ["MASK", "REDACTOR", "Redactor"]

MASK: Final = "<redacted>"
#: Shorter values are not masked: they would shred ordinary text, and a
#: secret that short protects nothing anyway.
_MIN_LEN: Final = 8


def _variants(secret: str) -> set[str]:
    """The secret, its percent-encoded form, and for a URL the part after the host."""
    out = {secret, quote(secret, safe="")}
    parts = urlsplit(secret)
    if parts.scheme and parts.netloc:
        tail = secret.split(parts.netloc, 1)[1]
        out.add(tail)
        if parts.password:
            out.add(parts.password)
    return {v for v in out if len(v) >= _MIN_LEN}


class Redactor:
    """Replaces known secret values by ``<redacted>`` in text and nested data."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Mask these values from now on (None and empty values are ignored)."""
        found: set[str] = set()
        for secret in secrets:
            if secret:
                found |= _variants(str(secret))
        with self._lock:
            merged = set(self._secrets) | found
            # Longest first: a URL that contains a token is masked whole.
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def redact(self, value: Any) -> Any:
        """``value`` with every secret masked: strings, and inside dicts, lists and tuples."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.redact(v) for v in value)
        if isinstance(value, BaseException):
            return self.text(f"{type(value).__name__}: {value}")
        return value

    def processor(self, _logger: Any, _name: str,
                  event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """A structlog processor; put it after ``format_exc_info`` so tracebacks are covered."""
        if self._secrets:
            for key, value in list(event_dict.items()):
                event_dict[key] = self.redact(value)
        return event_dict


#: The process's redactor (see the module docstring).
REDACTOR: Final = Redactor()
