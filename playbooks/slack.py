"""slack-sdk's own logging, with Slack secrets redacted.

The webhook URL and the bot token are secrets: slack-sdk's stdlib logging
prints the request URL on connection retries, so its clients log through a
private logger whose filter masks the secrets before anything is emitted (the
playbook engine's Slack poster, :mod:`playbooks.slack_post`, uses it).
"""

from __future__ import annotations

import logging

from playbooks.redact import Redactor

__all__: list[str] = []


class _RedactSecrets(logging.Filter):
    """Rewrites a record's message with each secret replaced by ``<redacted>``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._redactor = Redactor(secrets)

    def redact(self, text: str) -> str:
        return self._redactor.text(text)

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
