"""Retry-After parsing for Slack, webhook and PagerDuty answers.

RFC 9110 allows both forms, delta-seconds and an HTTP date; slack-sdk's own
``RateLimitErrorRetryHandler`` raises ``ValueError`` on a date (proxies and
gateways in front of a Slack-compatible endpoint do send dates), so the
response engine reads the header itself.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import math
import time
from typing import Final

__all__ = ["TRANSIENT_API_ERRORS", "retry_after_seconds"]

#: HTTP 200 ``{"ok": false}`` errors that Slack documents as transient.
TRANSIENT_API_ERRORS: Final = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
)


def retry_after_seconds(value: str, now: float | None = None) -> float | None:
    """Seconds to wait for a Retry-After value: delta-seconds or an HTTP date.

    Returns None when the value is neither; never a negative number.

    >>> retry_after_seconds("3"), retry_after_seconds(" 1.5 ")
    (3.0, 1.5)
    >>> retry_after_seconds("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0)
    6.0
    >>> retry_after_seconds("Thu, 01 Jan 1970 00:00:10 GMT", now=99.0)
    0.0
    >>> retry_after_seconds("soon") is None, retry_after_seconds("nan") is None
    (True, True)
    """
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" means UTC with no zone claimed
            when = when.replace(tzinfo=_dt.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
