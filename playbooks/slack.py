"""slack-sdk's own logging, with Slack secrets redacted.

The webhook URL and the bot token are secrets: slack-sdk's stdlib logging
prints the request URL on connection retries, so its clients log through a
private logger whose filter masks the secrets before anything is emitted (the
playbook engine's Slack poster, :mod:`playbooks.slack_post`, uses it). The
masking is the process's one :data:`~playbooks.redact.REDACTOR`: the filter
hands it the connection's secrets, so structlog's lines mask them too.
"""

from __future__ import annotations

import logging

from playbooks.redact import REDACTOR

__all__: list[str] = []


class _RedactSecrets(logging.Filter):
    """Rewrites a record's message with every known secret replaced by ``<redacted>``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        REDACTOR.add(*secrets)

    def redact(self, text: str) -> str:
        return REDACTOR.text(text)

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
    config can lower its level), but it
    propagates to ``playbooks.slack`` so the daemon's handlers still see it.
    """
    logger = logging.Logger("playbooks.slack.sdk", level=logging.WARNING)
    logger.parent = logging.getLogger("playbooks.slack")
    logger.addFilter(redactor)
    return logger
