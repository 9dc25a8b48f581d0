"""One Slack request per call, classified for the outbox (which owns retries).

:class:`SlackPoster` wraps slack-sdk's ``WebClient`` (bot token:
``chat.postMessage`` with ``thread_ts``, ``chat.update``) or ``WebhookClient``
(incoming webhook) with no in-call retry handlers: a 429 or 5xx becomes
:class:`~playbooks.outcomes.RetryLater` (Retry-After in seconds or as an HTTP
date honoured) and the outbox schedules the next attempt, so a rate-limited
Slack never holds a worker thread. Slack's permanent answers
(``channel_not_found``, ``invalid_auth``, webhook 404 ``no_service`` ...)
become :class:`~playbooks.outcomes.PermanentFailure`.

Not posting twice (bot token): every post carries its idempotency key and
finding id as message metadata (``event_type`` ``mlwatchd_finding``). When the
outcome of an earlier attempt is unknown (the request timed out or the
connection dropped after it was sent, or the process died mid-request), the
caller passes ``unknown_since`` (when that attempt started) and :meth:`post`
first reads the channel (``conversations.history``, or ``conversations.replies``
for a thread reply) from a little before that time, a bounded number of pages,
and returns the message it finds instead of posting again. A ``#name`` is
resolved to a channel id once (``conversations.list``; the id is also learnt
from every post's answer) and cached. If the channel cannot be read
(``missing_scope``, ``not_in_channel``, a name not listed) the post is sent
(a repeat is better than a lost alert) and a warning logged once. A webhook
has no read API: there, a post whose answer is lost is sent again.

The webhook URL and bot token are never logged: slack-sdk's logger is the
redacting one of :mod:`playbooks.slack`.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Final

import structlog
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web import WebClient
from slack_sdk.webhook import WebhookClient

from playbooks.config import SlackConnection
from playbooks.outcomes import PermanentFailure, RetryLater
from playbooks.render import SlackMessage
from playbooks.slack import _RedactSecrets, _sdk_logger
from playbooks.slack_retry import TRANSIENT_API_ERRORS, retry_after_seconds

__all__ = ["METADATA_EVENT", "SlackPoster"]

log = structlog.get_logger("mlwatchd.playbooks")

_DETAIL_MAX: Final = 200
_RETRY_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
#: ``metadata.event_type`` of our messages; ``event_payload`` holds ``key`` and ``finding_id``.
METADATA_EVENT: Final = "mlwatchd_finding"
#: Read this far before the unknown attempt started (our clock against Slack's).
_LOOKUP_SKEW_S: Final = 120.0
_LOOKUP_PAGE: Final = 200
_LOOKUP_PAGES: Final = 5
_LIST_PAGES: Final = 10
_CHANNEL_ID: Final = re.compile(r"^[CGD][A-Z0-9]{8,}$")
#: Slack answers meaning "this token cannot read that channel": post without checking.
_UNREADABLE: Final = frozenset({"missing_scope", "not_in_channel", "channel_not_found",
                                "not_allowed_token_type", "no_permission", "ekm_access_denied"})


class _Unreadable(Exception):
    """The channel cannot be read with this token; the reason is secret-free."""


def _retry_after(headers: Any) -> float | None:
    for key, value in (headers or {}).items():
        if str(key).lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) and value else value
            return retry_after_seconds(str(raw))
    return None


class SlackPoster:
    """Posts and updates messages; each call is one HTTP request."""

    def __init__(self, connection: SlackConnection) -> None:
        self.connection = connection
        self.redactor = _RedactSecrets(connection.secrets())
        logger = _sdk_logger(self.redactor)
        self._web: WebClient | None = None
        self._webhook: WebhookClient | None = None
        self._channel_ids: dict[str, str] = {}
        self._ids_lock = threading.Lock()
        self._warned: set[str] = set()
        if connection.bot_token:
            base = connection.api_base_url
            self._web = WebClient(
                token=connection.bot_token,
                base_url=base if base.endswith("/") else base + "/",
                timeout=connection.timeout_s,  # type: ignore[arg-type]  # urllib takes floats
                logger=logger,
                retry_handlers=[],
            )
        else:
            assert connection.webhook_url
            self._webhook = WebhookClient(
                connection.webhook_url,
                timeout=connection.timeout_s,  # type: ignore[arg-type]
                logger=logger,
                retry_handlers=[],
            )

    @property
    def web_api(self) -> bool:
        return self._web is not None

    @property
    def checks_before_resend(self) -> bool:
        """Can :meth:`post` find a message an earlier, unanswered attempt left?"""
        return self._web is not None and self.connection.check_before_resend

    def post(
        self, message: SlackMessage, *, channel: str | None = None,
        thread_ts: str | None = None, key: str | None = None, finding_id: str | None = None,
        unknown_since: float | None = None,
    ) -> dict[str, Any]:
        """Post; returns ``{"channel", "ts"}`` with a bot token, ``{}`` with a webhook.

        ``key`` (the idempotency key) and ``finding_id`` go into the message's
        metadata; with ``unknown_since`` set the channel is searched for ``key``
        first and a message found there is returned (with ``"found": True``).
        """
        try:
            if self._webhook is not None:
                resp = self._webhook.send(text=message.text, blocks=message.blocks,
                                          unfurl_links=False, unfurl_media=False)
                if resp.status_code == 200:
                    return {}
                error = str(resp.body)[:_DETAIL_MAX]
                if resp.status_code in _RETRY_STATUS:
                    raise RetryLater(f"slack webhook HTTP {resp.status_code}: {error}",
                                     after=_retry_after(resp.headers), status=resp.status_code)
                raise PermanentFailure(f"slack webhook HTTP {resp.status_code}: {error}",
                                       status=resp.status_code)
            assert self._web is not None
            args: dict[str, Any] = {
                "channel": channel or self.connection.channel or "",
                "text": message.text,
                "blocks": message.blocks,
                # Do not let Slack fetch URLs an attacker put in a field.
                "unfurl_links": False,
                "unfurl_media": False,
            }
            if thread_ts:
                args["thread_ts"] = thread_ts
            if key:
                args["metadata"] = {"event_type": METADATA_EVENT, "event_payload": {
                    "key": key, "finding_id": finding_id or ""}}
            if key and unknown_since is not None and self.checks_before_resend:
                found = self._find(args["channel"], key, unknown_since, thread_ts)
                if found is not None:
                    return found
            data = self._web.chat_postMessage(**args)
            posted = str(data.get("channel") or args["channel"])
            if _CHANNEL_ID.match(posted) and not _CHANNEL_ID.match(args["channel"]):
                with self._ids_lock:
                    self._channel_ids[args["channel"].lstrip("#")] = posted
            return {"channel": posted, "ts": str(data.get("ts") or "")}
        except SlackApiError as exc:
            raise self._classify(exc) from None
        except SlackRequestError as exc:  # its text quotes the URL: a secret
            raise PermanentFailure(f"slack refused the request: "
                                   f"{self.redactor.redact(str(exc))[:_DETAIL_MAX]}") from None
        except (RetryLater, PermanentFailure):
            raise
        except (OSError, TimeoutError) as exc:
            raise RetryLater(f"slack unreachable: {type(exc).__name__}: "
                             f"{self.redactor.redact(str(exc))[:_DETAIL_MAX]}") from None

    # -- looking for a message an unanswered attempt may have left ------------

    def _find(self, channel: str, key: str, since: float,
              thread_ts: str | None) -> dict[str, Any] | None:
        """Our message with metadata ``key`` posted since ``since``, or None.

        Raises SlackApiError/OSError like a post (classified by the caller);
        a channel this token cannot read is logged once and treated as "not
        found" (the post goes out: a possible repeat, never a lost alert).
        """
        assert self._web is not None
        try:
            channel_id = self._channel_id(channel)
            method = self._web.conversations_replies if thread_ts else \
                self._web.conversations_history
            args: dict[str, Any] = {"channel": channel_id, "limit": _LOOKUP_PAGE,
                                    "oldest": f"{max(0.0, since - _LOOKUP_SKEW_S):.6f}",
                                    "include_all_metadata": True}
            if thread_ts:
                args["ts"] = thread_ts
            for _ in range(_LOOKUP_PAGES):
                data: Any = method(**args)
                for msg in data.get("messages") or []:
                    meta = msg.get("metadata") or {}
                    payload = meta.get("event_payload") or {}
                    if meta.get("event_type") == METADATA_EVENT and payload.get("key") == key:
                        log.info("slack_post_found", channel=channel_id, ts=msg.get("ts"),
                                 detail="an earlier attempt was posted; not sending again")
                        return {"channel": channel_id, "ts": str(msg.get("ts") or ""),
                                "found": True}
                cursor = str((data.get("response_metadata") or {}).get("next_cursor") or "")
                if not cursor:
                    return None
                args["cursor"] = cursor
            self._warn_once("pages", "slack_lookup_truncated",
                            f"searched {_LOOKUP_PAGES * _LOOKUP_PAGE} messages; posting")
            return None
        except _Unreadable as exc:
            self._warn_once(str(exc), "slack_lookup_unavailable", str(exc))
            return None
        except SlackApiError as exc:
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            error = str(data.get("error", ""))
            if exc.response.status_code == 200 and error in _UNREADABLE:
                self._warn_once(error, "slack_lookup_unavailable",
                                f"cannot read the channel ({error}); a post whose answer "
                                "was lost may be repeated")
                return None
            raise

    def _channel_id(self, channel: str) -> str:
        """``channel`` as an id: as given, learnt from a post, or via conversations.list."""
        if _CHANNEL_ID.match(channel):
            return channel
        name = channel.lstrip("#")
        with self._ids_lock:
            known = self._channel_ids.get(name)
        if known:
            return known
        assert self._web is not None
        cursor: str | None = None
        for _ in range(_LIST_PAGES):
            data: Any = self._web.conversations_list(
                limit=_LOOKUP_PAGE, exclude_archived=True,
                types="public_channel,private_channel", cursor=cursor)
            for item in data.get("channels") or []:
                if item.get("name") == name and item.get("id"):
                    with self._ids_lock:
                        self._channel_ids[name] = str(item["id"])
                    return str(item["id"])
            cursor = str((data.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                break
        raise _Unreadable(f"channel #{name} is not in conversations.list; a post whose "
                          "answer was lost may be repeated")

    def _warn_once(self, what: str, event: str, detail: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(event, detail=detail)

    def update(self, message: SlackMessage, *, channel: str, ts: str) -> dict[str, Any]:
        """``chat.update`` (bot token only)."""
        if self._web is None:
            raise PermanentFailure("chat.update needs a bot token")
        try:
            self._web.chat_update(channel=channel, ts=ts, text=message.text,
                                  blocks=message.blocks)
        except SlackApiError as exc:
            raise self._classify(exc) from None
        except SlackRequestError as exc:
            raise PermanentFailure(f"slack refused the request: "
                                   f"{self.redactor.redact(str(exc))[:_DETAIL_MAX]}") from None
        except (OSError, TimeoutError) as exc:
            raise RetryLater(f"slack unreachable: {type(exc).__name__}") from None
        return {"channel": channel, "ts": ts}

    @staticmethod
    def _classify(exc: SlackApiError) -> RetryLater | PermanentFailure:
        response = exc.response
        status = response.status_code
        data = response.data if isinstance(response.data, dict) else {}
        error = str(data.get("error", "http_error"))[:_DETAIL_MAX]
        reason = f"slack HTTP {status}: {error}"
        if status in _RETRY_STATUS or error in TRANSIENT_API_ERRORS:
            return RetryLater(reason, after=_retry_after(response.headers), status=status)
        return PermanentFailure(reason, status=status)
