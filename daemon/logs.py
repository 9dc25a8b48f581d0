"""structlog configuration, done once at the edge (process start).

Logs go to stderr (stdout is reserved for findings in ``replay``). Secret
values never reach a log line: settings hold them as ``SecretStr``; the
process's :data:`playbooks.redact.REDACTOR` masks every configured secret by
value wherever it appears (an exception's text, a traceback); and ``_redact``
masks fields named like a secret (``bot_token``, not ``idempotency_key``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

from playbooks.redact import REDACTOR

__all__ = ["configure_logging"]

_SECRET_WORDS: Final = ("token", "password", "secret", "webhook_url")
#: ``*_key`` names that are identifiers, not secrets.
_NOT_SECRET: Final = frozenset({"idempotency_key", "dedup_key", "key", "partition_key"})


def _secret_name(name: str) -> bool:
    name = name.lower()
    if name in _NOT_SECRET:
        return False
    return any(word in name for word in _SECRET_WORDS) or name.endswith(
        ("signing_key", "routing_key", "api_key", "private_key"))


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event_dict):
        if _secret_name(name) and event_dict[name] is not None:
            event_dict[name] = "**********"
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog (and stdlib logging, e.g. kafka-python's) to stderr."""
    numeric = getattr(logging, level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            REDACTOR.processor,  # after format_exc_info: tracebacks quote URLs
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # kafka-python logs a lot at INFO; its warnings and errors still matter.
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
