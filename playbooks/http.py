"""One HTTPS POST, for the webhook and PagerDuty actions: TLS verification always on.

There is deliberately no switch to turn certificate or host-name checks off:
a security tool that pages people or triggers containment must not be
redirected by whoever sits on the network path. A private CA is supported
(``ca_file``); plain ``http://`` is accepted only for loopback addresses
(local relays and tests), which :func:`check_url` enforces at load time.
Redirects are not followed (a POST body must not wander to another host).

The outcome of one attempt is classified for the outbox:
2xx -> returned; 408/425/429/5xx, connection errors and timeouts ->
:class:`~playbooks.outcomes.RetryLater` (Retry-After honoured); other statuses,
TLS failures and redirects -> :class:`~playbooks.outcomes.PermanentFailure`.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NamedTuple
from urllib.parse import urlsplit

from playbooks.outcomes import PermanentFailure, RetryLater
from playbooks.slack_retry import retry_after_seconds

__all__ = ["HttpAnswer", "check_url", "post"]

_RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_BODY_MAX: Final = 300
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


class HttpAnswer(NamedTuple):
    status: int
    body: bytes


def check_url(url: str) -> str:
    """``url`` if it is https, or http to a loopback host; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host in _LOOPBACK_NAMES
        if loopback:
            return url
        raise ValueError("must be https:// (plain http:// only for loopback hosts)")
    raise ValueError("must be an https:// URL")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx surfaces as an HTTPError below


def _context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    # create_default_context already sets both; stated so nobody "fixes" it.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    ca_file: Path | None = None,
) -> HttpAnswer:
    """POST ``body``; returns a 2xx answer or raises RetryLater / PermanentFailure.

    Error texts never include the URL (webhook URLs often embed a token).
    """
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=_context(ca_file)), _NoRedirect()
    )
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return HttpAnswer(response.status, response.read(64 * 1024))
    except urllib.error.HTTPError as exc:
        status = exc.code
        detail = exc.read(_BODY_MAX).decode("utf-8", "replace") if exc.fp else ""
        reason = f"HTTP {status}" + (f": {detail.strip()[:_BODY_MAX]}" if detail.strip() else "")
        if status in _RETRY_STATUS:
            raw = exc.headers.get("Retry-After") if exc.headers else None
            after = retry_after_seconds(raw) if raw else None
            raise RetryLater(reason, after=after, status=status) from None
        raise PermanentFailure(reason, status=status) from None
    except urllib.error.URLError as exc:
        cause = exc.reason
        if isinstance(cause, ssl.SSLError):
            raise PermanentFailure(f"TLS: {getattr(cause, 'verify_message', None) or cause}"
                                   ) from None
        if isinstance(cause, socket.timeout | TimeoutError):
            raise RetryLater("timed out") from None
        raise RetryLater(f"connection failed: {type(cause).__name__}: {cause}") from None
    except ssl.SSLError as exc:
        raise PermanentFailure(f"TLS: {getattr(exc, 'verify_message', None) or exc}") from None
    except TimeoutError:
        raise RetryLater("timed out") from None
    except (ConnectionError, OSError) as exc:
        raise RetryLater(f"connection failed: {type(exc).__name__}") from None
