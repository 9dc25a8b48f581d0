"""The Slack alert route: findings at or above a severity, posted from one thread.

The daemon's consumer loop must never wait on Slack, so :meth:`SlackAlerter.submit`
only filters and enqueues into a bounded queue; a single worker thread renders
(:mod:`playbooks.render`) and posts with slack-sdk, through an incoming webhook
or a bot token (``chat.postMessage``). Retries on 429 (Retry-After honoured),
5xx and refused connections are slack-sdk retry handlers
(:mod:`playbooks.slack_retry`); Slack's permanent answers (``channel_not_found``,
``invalid_auth``, webhook 404 ``no_service`` ...) fail at once. Every alert ends
in exactly one outcome reported to ``on_outcome``:

``sent``            Slack accepted it.
``failed``          permanent error, retries exhausted, or cut short by ``stop()``.
``dropped``         the queue was full, the alerter was stopped, or ``stop()`` ran out of time.
``duplicate``       its ``finding_id`` was already sent or is waiting to be.
``below_threshold`` its severity is under ``min_severity``.

The webhook URL and the bot token are secrets: they are never logged, neither
by our structlog events nor by slack-sdk's own stdlib logging (which prints the
request URL on connection retries), which goes through a redacting logger here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Literal, TypeAlias

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web import WebClient
from slack_sdk.webhook import WebhookClient

from detectors.findings import SEVERITIES, Finding, severity_at_least
from playbooks.privacy import Pseudonymizer
from playbooks.render import render_finding
from playbooks.slack_retry import retry_handlers

__all__ = ["OUTCOMES", "Outcome", "SlackAlerter"]

Outcome: TypeAlias = Literal["sent", "failed", "dropped", "duplicate", "below_threshold"]
OUTCOMES: Final[tuple[str, ...]] = ("sent", "failed", "dropped", "duplicate", "below_threshold")

#: How many finding ids are remembered for dedup (sent or waiting).
DEDUP_CAPACITY: Final = 10_000
#: How long stop() waits, past its timeout, for the in-flight request after aborting retries.
_ABORT_GRACE_S: Final = 0.2
#: The worker's queue poll: how quickly it notices stop() on an empty queue.
_POLL_S: Final = 0.1
#: Under a flood, log the first drop and then one line per this many.
_DROP_LOG_EVERY: Final = 100
_DETAIL_MAX: Final = 200

_log = structlog.get_logger(__name__)


class _RedactSecrets(logging.Filter):
    """Rewrites a record's message with each secret replaced by ``<redacted>``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = secrets

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            # A traceback can quote the URL too; keep its text, redacted.
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _sdk_logger(redactor: _RedactSecrets) -> logging.Logger:
    """A logger for one alerter's slack-sdk clients: WARNING and up, redacted.

    It is deliberately not registered with ``logging.getLogger`` (so no global
    config can lower its level and each alerter has its own secrets), but it
    propagates to ``playbooks.slack`` so the daemon's handlers still see it.
    """
    logger = logging.Logger("playbooks.slack.sdk", level=logging.WARNING)
    logger.parent = logging.getLogger("playbooks.slack")
    logger.addFilter(redactor)
    return logger


class SlackAlerter:
    """Posts findings to Slack from a background thread; see the module docstring.

    ``bot_token`` (with ``channel``) wins over ``webhook_url`` when both are
    given: the Web API says why a post failed, a webhook mostly does not.
    ``retry_backoff_s`` is the first wait between 5xx/connection retries
    (doubling, at most 30 s); 429s wait what Retry-After says.
    """

    def __init__(
        self,
        *,
        webhook_url: str | None,
        bot_token: str | None,
        channel: str | None,
        api_base_url: str = "https://slack.com/api/",
        min_severity: str = "high",
        timeout_s: float = 10.0,
        max_retries: int = 5,
        queue_size: int = 10_000,
        pseudonymizer: Pseudonymizer | None = None,
        on_outcome: Callable[[str, Finding], None] | None = None,
        retry_backoff_s: float = 0.5,
    ) -> None:
        if min_severity not in SEVERITIES:
            raise ValueError(f"min_severity must be one of {', '.join(SEVERITIES)}")
        if bot_token and not channel:
            raise ValueError("channel is required with bot_token")
        if not bot_token and not webhook_url:
            raise ValueError("SlackAlerter needs webhook_url or bot_token")
        if timeout_s <= 0 or max_retries < 0 or queue_size < 1 or retry_backoff_s < 0:
            raise ValueError("timeout_s > 0, max_retries >= 0, queue_size >= 1 required")

        self._min_severity = min_severity
        self._channel = channel
        self._pseudonymizer = pseudonymizer
        self._on_outcome = on_outcome
        self._queue: queue.Queue[Finding] = queue.Queue(maxsize=queue_size)
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()  # sent or waiting, oldest first
        self._in_flight: Finding | None = None
        self._unsent: list[Finding] = []
        self._aborted = 0  # failed only because stop() cut their retries short
        self._closed = False
        self._dropped = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._abort = threading.Event()

        self._redactor = _RedactSecrets([s for s in (webhook_url, bot_token) if s])
        sdk_logger = _sdk_logger(self._redactor)
        self._web: WebClient | None = None
        self._webhook: WebhookClient | None = None
        if bot_token:
            self.route = "web_api"
            self._web = WebClient(
                token=bot_token,
                base_url=api_base_url if api_base_url.endswith("/") else api_base_url + "/",
                timeout=timeout_s,  # type: ignore[arg-type]  # urllib takes floats
                logger=sdk_logger,
                retry_handlers=retry_handlers(
                    max_retries, self._abort, backoff_s=retry_backoff_s, web_api=True
                ),
            )
        else:
            assert webhook_url is not None
            self.route = "webhook"
            self._webhook = WebhookClient(
                webhook_url,
                timeout=timeout_s,  # type: ignore[arg-type]
                logger=sdk_logger,
                retry_handlers=retry_handlers(
                    max_retries, self._abort, backoff_s=retry_backoff_s, web_api=False
                ),
            )

    def __repr__(self) -> str:
        return f"SlackAlerter(route={self.route!r}, min_severity={self._min_severity!r})"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the one worker thread (a daemon thread: it never holds up exit)."""
        if self._thread is not None or self._closed:
            raise RuntimeError("SlackAlerter can be started once, before stop()")
        self._thread = threading.Thread(target=self._run, name="mlwatchd-slack", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> int:
        """Deliver what is queued within ``timeout``; return how many alerts were not.

        New submits are refused (``dropped``) from here on. When time runs out,
        retry waits are cut short, the request in flight gets a last
        ``0.2 s``, and whatever is still queued is reported ``dropped``. The
        count is those alerts plus any whose retries were cut short (reported
        ``failed``) or that are still in flight.
        """
        with self._lock:
            self._closed = True
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout))
            if thread.is_alive():
                self._abort.set()
                thread.join(_ABORT_GRACE_S)
        with self._lock:
            left = list(self._unsent)
            self._unsent.clear()
            in_flight = self._in_flight is not None and thread is not None and thread.is_alive()
            aborted, self._aborted = self._aborted, 0
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            for finding in left:
                self._seen.pop(finding.finding_id, None)
        for finding in left:
            self._report("dropped", finding)
        undelivered = len(left) + int(in_flight) + aborted
        if undelivered:
            _log.warning("slack_alerts_undelivered_at_stop", count=undelivered, route=self.route)
        return undelivered

    # -- producer side -----------------------------------------------------

    def submit(self, finding: Finding) -> None:
        """Queue ``finding`` for Slack if it is severe enough and new. Never blocks."""
        if not severity_at_least(finding.severity, self._min_severity):
            self._report("below_threshold", finding)
            return
        fid = finding.finding_id
        with self._lock:
            if fid in self._seen:
                self._seen.move_to_end(fid)
                outcome: Outcome = "duplicate"
            elif self._closed:
                outcome = "dropped"
            else:
                try:
                    self._queue.put_nowait(finding)
                except queue.Full:
                    outcome = "dropped"
                else:
                    self._seen[fid] = None
                    while len(self._seen) > DEDUP_CAPACITY:
                        self._seen.popitem(last=False)
                    return
            if outcome == "dropped":
                self._dropped += 1
                dropped = self._dropped
        if outcome == "dropped" and (dropped == 1 or dropped % _DROP_LOG_EVERY == 0):
            _log.warning(
                "slack_alert_dropped",
                finding_id=fid,
                reason="stopped" if self._closed else "queue_full",
                queue_size=self._queue_size,
                dropped_total=dropped,
            )
        self._report(outcome, finding)

    # -- worker side -------------------------------------------------------

    def _run(self) -> None:
        while not self._abort.is_set():
            try:
                finding = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            if self._abort.is_set():
                with self._lock:
                    self._unsent.append(finding)
                return
            self._handle(finding)

    def _handle(self, finding: Finding) -> None:
        with self._lock:
            self._in_flight = finding
        started = time.monotonic()
        try:
            error = self._deliver(finding)
        except Exception as exc:  # the worker must outlive any one alert
            error = {
                "error": type(exc).__name__,
                "detail": self._redactor.redact(str(exc))[:_DETAIL_MAX],
            }
        elapsed = round(time.monotonic() - started, 3)
        with self._lock:
            self._in_flight = None
            if error is not None:
                # Not sent: a redelivery of the same finding may try again.
                self._seen.pop(finding.finding_id, None)
                if self._abort.is_set():
                    self._aborted += 1
        if error is None:
            _log.debug("slack_alert_sent", finding_id=finding.finding_id, route=self.route,
                       elapsed_s=elapsed)
            self._report("sent", finding)
        else:
            _log.warning(
                "slack_alert_failed",
                finding_id=finding.finding_id,
                route=self.route,
                elapsed_s=elapsed,
                aborted=self._abort.is_set(),
                **error,
            )
            self._report("failed", finding)

    def _deliver(self, finding: Finding) -> dict[str, Any] | None:
        """Post one finding; None when Slack accepted it, else fields saying why not."""
        message = render_finding(finding, self._pseudonymizer)
        if self._webhook is not None:
            resp = self._webhook.send(
                text=message.text, blocks=message.blocks, unfurl_links=False, unfurl_media=False
            )
            if resp.status_code == 200:
                return None
            # Webhook errors are a short code in the body: "no_service", "invalid_payload".
            return {"status": resp.status_code, "error": str(resp.body)[:_DETAIL_MAX]}
        assert self._web is not None
        try:
            self._web.chat_postMessage(
                channel=self._channel or "",
                text=message.text,
                blocks=message.blocks,
                unfurl_links=False,  # do not let Slack fetch URLs an attacker put in a field
                unfurl_media=False,
            )
        except SlackApiError as exc:
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            return {
                "status": exc.response.status_code,
                "error": str(data.get("error", "http_error"))[:_DETAIL_MAX],
            }
        return None

    def _report(self, outcome: Outcome, finding: Finding) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(outcome, finding)
        except Exception:  # a broken metrics hook must not stop alerting
            _log.exception("slack_outcome_callback_failed", outcome=outcome,
                           finding_id=finding.finding_id)
