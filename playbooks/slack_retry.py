"""Retry handlers for slack-sdk clients that a stopping daemon can cut short.

slack-sdk's built-in handlers sleep with ``time.sleep``, so a shutdown would
wait out every Retry-After, and ``RateLimitErrorRetryHandler`` raises
``ValueError`` when Retry-After is an HTTP date (RFC 9110 allows both forms;
proxies and gateways in front of a Slack-compatible endpoint do send dates).
These subclasses keep slack-sdk's decisions (which responses are retryable,
how many attempts) and change only how long and how they wait: on a shared
``threading.Event``, which :meth:`SlackAlerter.stop` sets when its time is up.

All handlers of one client share slack-sdk's ``RetryState``, so
``max_retry_count`` bounds the retries of one request in total.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import math
import random
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

__all__ = [
    "AbortableConnectionErrorRetryHandler",
    "AbortableRateLimitRetryHandler",
    "AbortableServerErrorRetryHandler",
    "TransientApiErrorRetryHandler",
    "retry_after_seconds",
    "retry_handlers",
]

#: A Retry-After longer than this is not waited out: the alert is reported
#: failed instead of holding every later alert behind it.
MAX_RETRY_AFTER_S: Final = 120.0
#: Backoff between 5xx/connection retries stops doubling here.
MAX_BACKOFF_S: Final = 30.0
#: HTTP 200 ``{"ok": false}`` errors that Slack documents as transient.
TRANSIENT_API_ERRORS: Final = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
)
_RETRYABLE_STATUS: Final = frozenset({500, 502, 503, 504})


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


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """One header value, whatever casing and list-wrapping the client used."""
    for key, value in (headers or {}).items():
        if key.lower() == name:
            if isinstance(value, list | tuple):
                return str(value[0]) if value else None
            return str(value)
    return None


def _backoff(base_s: float, attempt: int) -> float:
    interval = min(MAX_BACKOFF_S, base_s * float(2**attempt))
    return interval + random.uniform(0, interval / 4)  # jitter: spread out a herd of retries


class _AbortableWait:
    """Mixin: wait on ``abort`` instead of sleeping; no retry once it is set."""

    abort: threading.Event
    backoff_s: float

    def _can_retry(self, **kwargs: Any) -> bool:
        return not self.abort.is_set() and super()._can_retry(**kwargs)  # type: ignore[misc]

    def _wait_then_retry(self, state: RetryState, seconds: float) -> None:
        if self.abort.wait(seconds):
            return  # stopping: leave next_attempt_requested False, the client gives up
        state.next_attempt_requested = True
        state.increment_current_attempt()

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        self._wait_then_retry(state, _backoff(self.backoff_s, state.current_attempt))


class AbortableRateLimitRetryHandler(_AbortableWait, RateLimitErrorRetryHandler):
    """429: waits Retry-After (seconds or HTTP date), at most ``MAX_RETRY_AFTER_S``."""

    def __init__(self, max_retry_count: int, abort: threading.Event, backoff_s: float = 1.0):
        super().__init__(max_retry_count=max_retry_count)
        self.abort = abort
        self.backoff_s = backoff_s

    @staticmethod
    def wait_for(response: HttpResponse | None) -> float | None:
        """Seconds Slack asked us to wait; None when it did not say (or said nonsense)."""
        raw = _header(response.headers if response is not None else None, "retry-after")
        return retry_after_seconds(raw) if raw is not None else None

    def _can_retry(self, **kwargs: Any) -> bool:
        if not super()._can_retry(**kwargs):
            return False
        wait = self.wait_for(kwargs.get("response"))
        return wait is None or wait <= MAX_RETRY_AFTER_S

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        wait = self.wait_for(response)
        if wait is None:
            wait = _backoff(self.backoff_s, state.current_attempt)
        # A little on top: arriving exactly at the reset instant risks another 429.
        self._wait_then_retry(state, wait + random.uniform(0.0, 0.1))


class AbortableServerErrorRetryHandler(_AbortableWait, ServerErrorRetryHandler):
    """500/502/503/504 (slack-sdk's own list stops at 500/503): exponential backoff."""

    def __init__(self, max_retry_count: int, abort: threading.Event, backoff_s: float = 0.5):
        super().__init__(max_retry_count=max_retry_count)
        self.abort = abort
        self.backoff_s = backoff_s

    def _can_retry(self, **kwargs: Any) -> bool:
        response = kwargs.get("response")
        return (
            not self.abort.is_set()
            and response is not None
            and response.status_code in _RETRYABLE_STATUS
        )


class AbortableConnectionErrorRetryHandler(_AbortableWait, ConnectionErrorRetryHandler):
    """Connection refused/reset: exponential backoff.

    Timeouts are deliberately not retried (slack-sdk's list has no
    ``TimeoutError``): the post may have landed, and a retry would duplicate it.
    """

    def __init__(self, max_retry_count: int, abort: threading.Event, backoff_s: float = 0.5):
        super().__init__(max_retry_count=max_retry_count)
        self.abort = abort
        self.backoff_s = backoff_s


class TransientApiErrorRetryHandler(_AbortableWait, RetryHandler):
    """Web API HTTP 200 with ``{"ok": false, "error": "internal_error"}`` and the like."""

    def __init__(self, max_retry_count: int, abort: threading.Event, backoff_s: float = 0.5):
        super().__init__(max_retry_count=max_retry_count)
        self.abort = abort
        self.backoff_s = backoff_s

    def _can_retry(self, **kwargs: Any) -> bool:
        response: HttpResponse | None = kwargs.get("response")
        if self.abort.is_set() or response is None or response.status_code != 200:
            return False
        body = response.body if isinstance(response.body, dict) else {}
        return body.get("ok") is False and body.get("error") in TRANSIENT_API_ERRORS


def retry_handlers(
    max_retries: int, abort: threading.Event, *, backoff_s: float = 0.5, web_api: bool
) -> list[RetryHandler]:
    """The handlers for one client; the Web API also gets transient ``ok: false`` retries."""
    handlers: list[RetryHandler] = [
        AbortableRateLimitRetryHandler(max_retries, abort, backoff_s=max(backoff_s, 0.1)),
        AbortableServerErrorRetryHandler(max_retries, abort, backoff_s=backoff_s),
        AbortableConnectionErrorRetryHandler(max_retries, abort, backoff_s=backoff_s),
    ]
    if web_api:
        handlers.append(TransientApiErrorRetryHandler(max_retries, abort, backoff_s=backoff_s))
    return handlers
