"""Authentication of mlwatchd's internal records (checkpoints, manifests, audit).

Every internal record that another mlwatchd process reads back is signed with
HMAC-SHA256 under ``state.signing_key``. The MAC covers a *context* (what the
record is and where it belongs: record kind, consumer group, topic or store,
state partition) followed by the record's raw bytes, so a record that verifies
in one place does not verify in another (partition 1's checkpoint copied to
partition 0's key, one group's audit records shown to another). Records are
verified before any of their bytes are parsed.

>>> key = b"0123456789abcdef"
>>> tag = record_mac(key, ["checkpoint", "g", "p0"], b"body")
>>> verify_mac(key, ["checkpoint", "g", "p0"], b"body", tag)
True
>>> verify_mac(key, ["checkpoint", "g", "p1"], b"body", tag)
False
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

import orjson

__all__ = ["MAC_HEADER", "MIN_KEY_BYTES", "RejectHook", "header", "record_mac", "verify_mac"]

#: Kafka header carrying the hex HMAC of an internal record.
MAC_HEADER = "mlwatchd-mac"
#: Shortest accepted ``state.signing_key``.
MIN_KEY_BYTES = 16

#: Called with (record, reason) for every internal record refused, e.g.
#: ("manifest", "bad_mac"); the daemon counts them in
#: ``mlwatchd_internal_records_rejected_total``.
RejectHook = Callable[[str, str], None]


def record_mac(key: bytes, context: Sequence[str], body: bytes) -> str:
    """Hex HMAC-SHA256 of ``body`` bound to ``context``.

    The context is JSON-encoded (an unambiguous framing: no choice of group
    or topic names makes two different contexts the same bytes).
    """
    framed = orjson.dumps(list(context)) + b"\n"
    return hmac.new(key, framed + body, hashlib.sha256).hexdigest()


def verify_mac(key: bytes, context: Sequence[str], body: bytes, tag: str | bytes | None) -> bool:
    """True when ``tag`` is the MAC of ``body`` in ``context`` (constant time)."""
    if tag is None:
        return False
    if isinstance(tag, bytes):
        try:
            tag = tag.decode("ascii")
        except UnicodeDecodeError:
            return False
    return hmac.compare_digest(tag.encode("ascii", "replace"),
                               record_mac(key, context, body).encode("ascii"))


def header(headers: Sequence[tuple[str, bytes]] | None, name: str = MAC_HEADER) -> bytes | None:
    """The value of header ``name``; None when it is absent or appears twice."""
    found = [value for key, value in headers or () if key == name]
    return found[0] if len(found) == 1 else None
