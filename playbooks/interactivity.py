"""Slack interactivity requests: signature check and the button clicks we posted.

Slack signs every request with the app's signing secret (v0):
``X-Slack-Signature: v0=hex(HMAC-SHA256(secret, "v0:" + timestamp + ":" + body))``
and ``X-Slack-Request-Timestamp``. A request is accepted only when the
signature matches (constant-time compare) and the timestamp is within the
window (5 minutes at most), which bounds replays; approvals are one-shot on
top of that (a decided approval cannot be decided again).

>>> body = b"payload=%7B%7D"
>>> headers = sign_request(b"secret", body, timestamp=1000)
>>> verify_signature(b"secret", headers, body, now=1100.0)
True
>>> verify_signature(b"secret", headers, body, now=1400.0)   # too old
False
>>> verify_signature(b"other", headers, body, now=1100.0)
False
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs

__all__ = [
    "ACK",
    "APPROVE",
    "DENY",
    "Click",
    "parse_clicks",
    "sign_request",
    "verify_signature",
]

APPROVE: Final = "mlwatchd_approve"
DENY: Final = "mlwatchd_deny"
ACK: Final = "mlwatchd_ack"
_VALUE_MAX: Final = 200


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def sign_request(secret: bytes, body: bytes, *, timestamp: int) -> dict[str, str]:
    """The headers Slack would send with ``body`` (for tests and the fake Slack)."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    digest = hmac.new(secret, base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}"}


def verify_signature(secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float,
                     max_age_s: float = 300.0) -> bool:
    """True when ``body`` was signed by Slack with ``secret`` within ``max_age_s`` of now."""
    stamp = _header(headers, "x-slack-request-timestamp")
    signature = _header(headers, "x-slack-signature")
    if not stamp or not signature or not secret:
        return False
    stamp = stamp.strip()
    # Seconds since the epoch: ten digits for centuries. Anything else (a sign,
    # "1e9", 400 digits that overflow a float) is a bad request, not an error.
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        return False
    ts = int(stamp)
    if abs(now - ts) > max_age_s:
        return False
    expected = sign_request(secret, body, timestamp=ts)["X-Slack-Signature"]
    return hmac.compare_digest(expected.encode(), signature.strip().encode())


@dataclass(frozen=True)
class Click:
    """One button press from a ``block_actions`` payload."""

    action_id: str
    value: str
    user_id: str
    user_name: str
    channel: str | None
    message_ts: str | None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_clicks(body: bytes) -> list[Click]:
    """Our buttons pressed in a form-encoded ``payload=`` body; ValueError if malformed."""
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    raw = form.get("payload")
    if not raw:
        raise ValueError("no payload field")
    try:
        payload: Any = json.loads(raw[0])
    except ValueError:
        raise ValueError("payload is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("payload is not an object")
    if payload.get("type") != "block_actions":
        return []
    user = _object(payload.get("user"))
    channel = _object(payload.get("channel"))
    container = _object(payload.get("container"))
    message = _object(payload.get("message"))
    clicks = []
    for action in payload.get("actions") or []:
        if not isinstance(action, dict):
            continue
        action_id = action.get("action_id")
        if action_id not in (APPROVE, DENY, ACK):
            continue
        clicks.append(Click(
            action_id=str(action_id),
            value=str(action.get("value", ""))[:_VALUE_MAX],
            user_id=str(user.get("id", ""))[:40],
            user_name=str(user.get("username") or user.get("name") or "")[:80],
            channel=str(channel.get("id") or container.get("channel_id") or "") or None,
            message_ts=str(container.get("message_ts") or message.get("ts") or "") or None,
        ))
    return clicks
