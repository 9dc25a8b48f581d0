"""One Slack request per call, classified for the outbox (which owns retries).

:class:`SlackPoster` wraps slack-sdk's ``WebClient`` (bot token:
``chat.postMessage`` with ``thread_ts``, ``chat.update``) or ``WebhookClient``
(incoming webhook) with no in-call retry handlers: a 429 or 5xx becomes
:class:`~playbooks.outcomes.RetryLater` (Retry-After in seconds or as an HTTP
date honoured) and the outbox schedules the next attempt, so a rate-limited
Slack never holds a worker thread. Slack's permanent answers
(``channel_not_found``, ``invalid_auth``, webhook 404 ``no_service`` ...)
become :class:`~playbooks.outcomes.PermanentFailure`.

The webhook URL and bot token are never logged: slack-sdk's logger is the
redacting one of :mod:`playbooks.slack`.
"""

from __future__ import annotations

from typing import Any, Final

from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web import WebClient
from slack_sdk.webhook import WebhookClient

from playbooks.config import SlackConnection
from playbooks.outcomes import PermanentFailure, RetryLater
from playbooks.render import SlackMessage
from playbooks.slack import _RedactSecrets, _sdk_logger
from playbooks.slack_retry import TRANSIENT_API_ERRORS, retry_after_seconds

__all__ = ["SlackPoster"]

_DETAIL_MAX: Final = 200
_RETRY_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})


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

    def post(
        self, message: SlackMessage, *, channel: str | None = None,
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        """Post; returns ``{"channel", "ts"}`` with a bot token, ``{}`` with a webhook."""
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
            data = self._web.chat_postMessage(**args)
            return {"channel": str(data.get("channel") or args["channel"]),
                    "ts": str(data.get("ts") or "")}
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
